"""`cardinal`: the command line. The only module that reads argv, files and the environment."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from gateway import planfile
from gateway.planner.accuracy import check_all, render_table, summary
from gateway.planner.capacity import Workload
from gateway.planner.catalog import Catalog, load_catalog, model_from_hf_config
from gateway.planner.errors import PlanError
from gateway.planner.kvcache import MLA_LAYOUTS
from gateway.planner.plan import KV_DTYPES, PlanRequest, make_plan
from gateway.planner.report import render_text


class CliError(Exception):
    """A user error: printed as one line naming the flag, exit status 2."""


def duration(text: str) -> float:
    """Seconds from `2s`, `50ms`, `1.5` (seconds) or `1m`."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(ms|s|m)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 2s or 50ms")
    value = float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def fraction(text: str) -> float:
    """`0.2` or `20%`."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction like 0.2 or 20%") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def qps_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of QPS") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every stage must be a QPS > 0")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cardinal", description="Size, deploy, prove and watch a "
                                "self-hosted LLM fleet.")
    sub = p.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="size a fleet: memory fit, per-card capacity, cards, cost")
    add_plan_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("-o", "--output", type=Path, help="write the plan file (fleet.yaml)")
    cat = sub.add_parser("catalog", help="list the models, quantizations, GPUs and engines")
    cat.add_argument("kind", nargs="?", choices=["models", "quants", "gpus", "engines"])
    acc = sub.add_parser("check-accuracy", help="print the planner against real reference figures")
    acc.add_argument("--reference", type=Path, help="a reference.csv (default: the bundled copy)")
    seeds = sub.add_parser("seeds", help="check the seed documents' claims (writes docs/seeds.md)")
    seeds.add_argument("-o", "--output", type=Path, help="write the markdown here")
    show = sub.add_parser("show", help="validate a plan file and print its report")
    show.add_argument("plan", type=Path)
    return p


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to serve")
    g.add_argument("--model", help="catalog model id or alias (see `cardinal catalog models`)")
    g.add_argument("--model-config", type=Path, help="a Hugging Face config.json for any other model")
    g.add_argument("--quant", required=True, help="quantization id, e.g. awq, fp8, q4_k_m")
    g.add_argument("--gpu", required=True, help="GPU id or alias, e.g. a100-80gb-sxm, 4090")
    g.add_argument("--engine", help="vllm or llama.cpp (default: from the quantization's format)")
    w = p.add_argument_group("workload")
    w.add_argument("--target-qps", type=positive(float), required=True)
    w.add_argument("--prompt-tokens", type=positive(int), required=True)
    w.add_argument("--output-tokens", type=positive(int), required=True)
    w.add_argument("--ttft-slo", type=duration, default=2.0, help="time to first token (default 2s)")
    w.add_argument("--tpot-slo", type=duration, default=0.05,
                   help="time per output token (default 50ms)")
    w.add_argument("--headroom", type=fraction, default=0.2, help="spare capacity (default 20%%)")
    w.add_argument("--ramp", type=qps_list, default=(),
                   help="growing targets, e.g. 25,50,75: replicas needed at each stage")
    k = p.add_argument_group("engine and hardware")
    k.add_argument("--kv-dtype", choices=sorted(KV_DTYPES), default="auto")
    k.add_argument("--mla-cache", choices=MLA_LAYOUTS, default="latent",
                   help="llama.cpp DeepSeek cache layout: latent (current builds), latent-kv "
                        "(builds before 2026-01), legacy (GGUFs converted before 2025-04)")
    k.add_argument("--gpus-per-replica", type=positive(int), help="force TP size / split GPUs")
    k.add_argument("--max-gpus-per-replica", type=positive(int))
    k.add_argument("--max-batch", type=positive(int), help="cap on concurrent sequences")
    k.add_argument("--gpu-price", type=positive(float), help="USD per GPU-hour (overrides catalog)")
    k.add_argument("--per-card-qps", type=positive(float),
                   help="use this per-card capacity instead of the model's (e.g. a measurement)")
    k.add_argument("--cpu-bandwidth", type=positive(float), default=100.0,
                   help="effective host memory bandwidth in GB/s for offloaded weights")
    k.add_argument("--cpu-ram", type=positive(float), help="host RAM in GiB (limits offload)")
    k.add_argument("--api-model", help="litellm key of the hosted API to compare against")


def request_from_args(args: argparse.Namespace, catalog: Catalog) -> PlanRequest:
    if bool(args.model) == bool(args.model_config):
        raise PlanError("give exactly one of --model and --model-config", field="model")
    model = catalog.model(args.model) if args.model else _model_from_file(args.model_config)
    quant = catalog.quant(args.quant)
    engine = catalog.engine(args.engine or ("llama.cpp" if quant.is_gguf else "vllm"))
    wl = Workload(prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
                  target_qps=args.target_qps, ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo,
                  headroom=args.headroom)
    return PlanRequest(model=model, quant=quant, gpu=catalog.gpu(args.gpu), engine=engine,
                       workload=wl, kv_dtype=args.kv_dtype, mla_cache=args.mla_cache,
                       gpus_per_replica=args.gpus_per_replica,
                       max_gpus_per_replica=args.max_gpus_per_replica, max_batch=args.max_batch,
                       gpu_price_usd_per_hour=args.gpu_price, per_card_qps=args.per_card_qps,
                       host_bandwidth_gb_s=args.cpu_bandwidth, cpu_ram_gib=args.cpu_ram,
                       ramp_qps=args.ramp, api_model=args.api_model)


def _model_from_file(path: Path):  # noqa: ANN202 - Model
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PlanError(f"cannot read {path}: {e.strerror}", field="model_config") from None
    except json.JSONDecodeError as e:
        raise PlanError(f"{path} is not JSON: {e}", field="model_config") from None
    if not isinstance(cfg, dict):
        raise PlanError(f"{path} must hold a JSON object", field="model_config")
    name = cfg.get("_name_or_path") or path.parent.name or path.stem
    return model_from_hf_config(cfg, id=str(name).split("/")[-1].lower(), name=str(name),
                                source=str(path))


def cmd_plan(args: argparse.Namespace, catalog: Catalog) -> int:
    plan = make_plan(request_from_args(args, catalog), catalog)
    data = plan.to_dict()
    if args.model_config:
        data["inputs"]["model_config"] = json.loads(args.model_config.read_text(encoding="utf-8"))
    if args.output:
        args.output.write_text(planfile.dump(data), encoding="utf-8")
    print(json.dumps(data, indent=2) if args.json else render_text(data), end="" if not args.json
          else "\n")
    if args.output and not args.json:
        print(f"\nplan written to {args.output}")
    return 0 if plan.fit.ok else 1


def cmd_catalog(args: argparse.Namespace, catalog: Catalog) -> int:
    kinds = [args.kind] if args.kind else ["models", "quants", "gpus", "engines"]
    for kind in kinds:
        print(f"{kind}:")
        for key, entry in getattr(catalog, kind).items():
            print(f"  {key:34} {_describe(kind, entry)}")
        print()
    return 0


def _describe(kind: str, e: Any) -> str:
    if kind == "models":
        arch = "MoE+MLA" if e.mla else ("MoE" if e.moe else "dense")
        return f"{e.name} ({arch}, {e.num_layers} layers, context {e.max_context})"
    if kind == "quants":
        return f"{e.name} [{e.format}]"
    if kind == "gpus":
        price = "no price" if e.price_usd_per_hour is None else f"${e.price_usd_per_hour:g}/h"
        ref = " (reference only)" if e.reference_only else ""
        return f"{e.name}: {e.memory_gib:g} GiB, {e.bandwidth_gb_s:g} GB/s, {price}{ref}"
    return e.name


def cmd_accuracy(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.planner.accuracy import read_rows

    rows = read_rows(args.reference.read_text(encoding="utf-8")) if args.reference else None
    checks = check_all(catalog, rows)
    print(render_table(checks), end="")
    size, decode = summary(checks, "size"), summary(checks, "decode_tps")
    ok = (size["median_abs_error"] or 1) <= 0.03 and (size["max_abs_error"] or 1) <= 0.08 \
        and (decode["median_abs_error"] or 1) <= 0.25
    print(f"\ntargets (size median <= 3 %, every size row <= 8 %, decode median <= 25 %): "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


def cmd_seeds(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.seeds import render_seeds

    text = render_seeds(catalog)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"written to {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_show(args: argparse.Namespace, catalog: Catalog) -> int:
    try:
        text = args.plan.read_text(encoding="utf-8")
    except OSError as e:
        raise PlanError(f"cannot read {args.plan}: {e.strerror}", field="plan") from None
    print(render_text(planfile.load(text)), end="")
    return 0


COMMANDS = {"plan": cmd_plan, "catalog": cmd_catalog, "check-accuracy": cmd_accuracy,
            "seeds": cmd_seeds, "show": cmd_show}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args, load_catalog())
    except (PlanError, planfile.PlanFileError) as e:
        flag = "--" + e.field.replace("_", "-").split(".")[0] if isinstance(e, PlanError) else e.field
        print(f"cardinal {args.command}: error: {flag}: {e}", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:
        print(f"cardinal {args.command}: error: not valid YAML: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
