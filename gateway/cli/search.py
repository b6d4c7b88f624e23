"""`cardinal plan --search`: the flags, the prices file and the output files of a search."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from gateway import planfile
from gateway.cli.args import positive, write_text
from gateway.planner.capacity import Workload
from gateway.planner.catalog import Catalog
from gateway.planner.errors import PlanError
from gateway.planner.plan import ENGINE_KV_DTYPES, ENGINE_ONLY
from gateway.planner.prices import Price, prices_from_dict
from gateway.planner.quality import load_quality
from gateway.planner.search import RANKINGS, SearchSpace, search
from gateway.planner.search_report import option_plan, render_search_text, search_dict

SEARCH_ONLY = ("gpus", "quants", "engines", "min_quality", "prices", "pick", "plot")
NOT_WITH_SEARCH = {"per_card_qps": None, "ramp": (), "gpu_price": None, "gpu_layers": None}
# engine knobs: with --search, an error about one names the engine filter to add
ENGINE_KNOBS = ("kv_dtype", "max_num_batched_tokens", "gpu_memory_utilization")


def names(text: str) -> tuple[str, ...]:
    """`a100,h100-sxm` -> ('a100', 'h100-sxm')."""
    out = tuple(n.strip() for n in text.split(",") if n.strip())
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of names")
    return out


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("search (which fleet is cheapest)")
    s.add_argument(
        "--search",
        action="store_true",
        help="try every GPU x quantization x engine x GPUs per replica; rank by monthly cost",
    )
    s.add_argument("--gpus", type=names, help="only these GPUs, e.g. a100,h100-sxm")
    s.add_argument("--quants", type=names, help="only these quantizations, e.g. awq,fp8,q4_k_m")
    s.add_argument("--engines", type=names, help="only these engines: vllm, llama.cpp")
    s.add_argument(
        "--min-quality",
        choices=load_quality().tiers,
        help="quality floor: drop quantizations in a worse tier",
    )
    s.add_argument("--prices", type=Path, help="prices.yaml overriding the catalog's GPU prices")
    s.add_argument("--pick", type=positive(int), help="with -o: write the plan of this row")
    s.add_argument("--plot", type=Path, help="write cost against capacity as PNG here")
    s.add_argument(
        "--rank",
        choices=RANKINGS,
        default="cost",
        help="cost (default) or conservative: the cost with cards as slow as the model's "
        "measured error for their engine",
    )
    s.add_argument("--top", type=int, default=20, help="rows of the ranked table to print (0: all)")


def check_flags(args: argparse.Namespace) -> None:
    """Search-only flags need --search; single-plan flags make no sense with it."""
    if not args.search:
        for name in SEARCH_ONLY:
            if getattr(args, name) is not None:
                raise PlanError(f"--{name.replace('_', '-')} goes with --search", field=name)
        return
    for name, unset in NOT_WITH_SEARCH.items():
        if getattr(args, name) != unset:
            hint = "; give prices in a --prices file" if name == "gpu_price" else ""
            raise PlanError(
                f"--{name.replace('_', '-')} plans one fleet, not a search{hint}", field=name
            )


def read_prices(path: Path, catalog: Catalog) -> dict[str, Price]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PlanError(f"cannot read {path}: {e.strerror}", field="prices") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or "parse error"
        raise PlanError(f"{path} is not valid YAML{where}: {problem}", field="prices") from None
    return prices_from_dict(raw, catalog)


def space_from_args(args: argparse.Namespace) -> SearchSpace:
    def merged(many: tuple[str, ...] | None, one: str | None) -> tuple[str, ...]:
        return tuple(many or ()) + ((one,) if one else ())

    return SearchSpace(
        gpus=merged(args.gpus, args.gpu),
        quants=merged(args.quants, args.quant),
        engines=merged(args.engines, args.engine),
        gpus_per_replica=args.gpus_per_replica,
        max_gpus_per_replica=args.max_gpus_per_replica,
        min_quality=args.min_quality,
        rank_by=args.rank,
    )


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The workload flags `cardinal plan` shares with `--search`."""
    return Workload(
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        target_qps=args.target_qps,
        ttft_slo_s=args.ttft_slo,
        tpot_slo_s=args.tpot_slo,
        headroom=args.headroom,
    )


def cmd_search(args: argparse.Namespace, catalog: Catalog, *, model: Any) -> int:
    try:
        result = search(
            catalog,
            model=model,
            workload=workload_from_args(args),
            space=space_from_args(args),
            prices=read_prices(args.prices, catalog) if args.prices else None,
            kv_dtype=args.kv_dtype,
            mla_cache=args.mla_cache,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            gpu_memory_utilization=args.gpu_memory_utilization,
            host_bandwidth_gb_s=args.cpu_bandwidth,
            cpu_ram_gib=args.cpu_ram,
        )
    except PlanError as e:
        if e.field not in ENGINE_KNOBS:
            raise
        raise PlanError(
            f"{e}; with --search add {_engines_with(args, e.field)}", field=e.field
        ) from None
    data = search_dict(result)
    pick = args.pick or 1
    if args.output and not result.options:
        raise PlanError("no combination meets the SLOs: there is no plan to write", field="output")
    if args.output and pick > len(result.options):
        raise PlanError(
            f"row {pick} does not exist: {len(result.options)} options meet the SLOs",
            field="pick",
        )
    if args.pick and not args.output:
        raise PlanError("--pick chooses the row written by -o FILE", field="pick")
    written = _write_files(args, data, result, pick)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(render_search_text(data, limit=args.top or None), end="")
        for line in written:
            print(line)
    return 0 if result.options else 1


def _engines_with(args: argparse.Namespace, knob: str) -> str:
    """`--engines vllm`: the engine filter under which a knob's value makes sense."""
    if knob == "kv_dtype":
        owners = [e for e, kinds in ENGINE_KV_DTYPES.items() if args.kv_dtype in kinds]
    else:
        owners = [ENGINE_ONLY[knob][0]]
    return "--engines " + ",".join(owners)


def _write_files(args: argparse.Namespace, data: dict, result: Any, pick: int) -> list[str]:
    out = []
    if args.output:
        write_text(args.output, planfile.dump(option_plan(result.options[pick - 1])))
        out.append(f"\nrow {pick} written to {args.output} as the plan file")
    plot = args.plot or (args.output and args.output.with_name(args.output.stem + "-search.png"))
    if plot and result.options:
        from gateway.planner.search_plot import search_png

        plot.write_bytes(search_png(data))
        out.append(f"cost against capacity plotted in {plot}")
    return out
