"""`cardinal`: the command line. The only module that reads argv, files and the environment."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from gateway import planfile
from gateway.cli_calibrate import (
    add_calibrate_parser,
    add_calibration_argument,
    calibrated_plan,
    calibration_text,
    cmd_calibrate,
)
from gateway.cli_search import add_search_arguments, check_flags, cmd_search, workload_from_args
from gateway.planner.accuracy import check_all, summary
from gateway.planner.catalog import Catalog, Model, load_catalog, model_from_hf_config
from gateway.planner.errors import PlanError
from gateway.planner.kvcache import MLA_LAYOUTS
from gateway.planner.plan import ESTIMATORS, KV_DTYPES, PlanRequest, make_plan, request_for
from gateway.planner.report import plan_dict, render_text
from gateway.reports.accuracy import ACCURACY_HEADER, render_document

if TYPE_CHECKING:
    from gateway.sim.card import Card
    from gateway.sim.faults import Faults


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


def unit_fraction(text: str) -> float:
    """A share in (0, 1]: `0.9`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number like 0.9") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def qps_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of QPS") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every stage must be a QPS > 0")
    return values


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="cardinal", description="Size, deploy, prove and watch a self-hosted LLM fleet."
    )
    sub = p.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="size a fleet: memory fit, per-card capacity, cards, cost")
    add_plan_arguments(plan)
    add_search_arguments(plan, positive=positive)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("-o", "--output", type=Path, help="write the plan file (fleet.yaml)")
    add_calibration_argument(plan)
    cat = sub.add_parser("catalog", help="list the models, quantizations, GPUs and engines")
    cat.add_argument("kind", nargs="?", choices=["models", "quants", "gpus", "engines"])
    acc = sub.add_parser("check-accuracy", help="print the planner against real reference figures")
    acc.add_argument("--reference", type=Path, help="a reference.csv (default: the bundled copy)")
    acc.add_argument("-o", "--output", type=Path, help="also write the table as markdown here")
    seeds = sub.add_parser("seeds", help="check the seed documents' claims (writes docs/seeds.md)")
    seeds.add_argument("-o", "--output", type=Path, help="write the markdown here")
    sim = sub.add_parser(
        "sim",
        help="serve simulated cards that speak vLLM's OpenAI API",
        description="Serve simulated cards (a continuous-batching engine timed by the planner's "
        "speed model) on consecutive ports: from a plan file, or from --model/--quant/--gpu.",
    )
    sim.add_argument("--plan", type=Path, help="fleet.yaml: the replica it plans, --cards replicas")
    sim.add_argument("--model")
    sim.add_argument("--quant")
    sim.add_argument("--gpu")
    sim.add_argument("--engine")
    sim.add_argument(
        "--cards",
        type=positive(int),
        help="cards on consecutive ports (default: the plan's replicas, or 1)",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=positive(int), default=8001, help="port of the first card")
    sim.add_argument(
        "--tokens-per-event",
        type=positive(int),
        default=1,
        help="tokens per SSE event after the first, like vLLM's stream interval (timing is exact)",
    )
    sim.add_argument("--max-num-seqs", type=positive(int), help="override the batch limit")
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="[CARD:]NAME=VALUE",
        help="inject a fault on one card (or all): loading_s=30s, error_rate=5%%, spike_rate=0.1, "
        "spike_s=2s, hang, crash_after=20, crash_rate=0.5; also at run time via /admin/faults",
    )
    sim.add_argument("--seed", type=int, default=0, help="card i draws its faults from seed + i")
    add_serve_parser(sub)
    add_render_parser(sub)
    add_calibrate_parser(sub, duration=duration, positive=positive)
    prove = sub.add_parser(
        "prove",
        help="prove a plan: its cards and gateway under the Locust scenario, with a verdict",
        description="Start the plan's replicas as simulated cards (or use --backends / --gateway), "
        "start the gateway, run loadtest/qps.py at the target rate and print the verdict. "
        "Exit 0: the plan holds; 1: it does not; 2: the run could not judge it.",
    )
    prove.add_argument("plan", type=Path, help="fleet.yaml")
    prove.add_argument("--duration", type=duration, default=60.0, help="of each Locust run")
    prove.add_argument("--target-qps", type=positive(float), help="instead of the plan's")
    prove.add_argument("--cards", type=positive(int), help="instead of the plan's replicas")
    prove.add_argument("--backends", nargs="+", metavar="URL", help="real engines instead of sims")
    prove.add_argument("--gateway", metavar="URL", help="an already running gateway")
    prove.add_argument("--sweep", action="store_true", help="search the highest passing rate")
    prove.add_argument(
        "--check-minimal", action="store_true", help="also show that one card fewer fails"
    )
    prove.add_argument("--report", type=Path, default=Path("report"), help="report directory")
    prove.add_argument("--tokens-per-event", type=positive(int), default=4)
    show = sub.add_parser("show", help="validate a plan file and print its report")
    show.add_argument("plan", type=Path)
    return p


def add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="the gateway: OpenAI-compatible load balancing over the cards, with metrics",
        description="Serve the gateway from gateway.yaml (--config), or over a plan's replicas "
        "(--plan with --backends or --base-port). SIGHUP reloads --config; SIGTERM (or SIGINT) "
        "stops accepting and lets requests in flight finish (server.drain_timeout_s).",
    )
    src = serve.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="gateway.yaml")
    src.add_argument("--plan", type=Path, help="fleet.yaml: one backend per URL or replica")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--backends", nargs="+", metavar="URL", help="the plan's replicas")
    where.add_argument(
        "--base-port", type=positive(int), help="replica i at http://127.0.0.1:PORT+i"
    )
    serve.add_argument("--listen", help="host:port (default: the config's, or 127.0.0.1:8080)")
    serve.add_argument(
        "--workers", type=positive(int), default=1, help="processes sharing the port (SO_REUSEPORT)"
    )


def add_render_parser(sub: Any) -> None:
    render = sub.add_parser(
        "render",
        help="deploy files from a plan: Compose, nginx, Kubernetes, engine commands, monitoring",
        description="Write the files that turn a plan into a running, watched fleet.",
    )
    render.add_argument("plan", type=Path, help="fleet.yaml")
    render.add_argument("-o", "--output", type=Path, default=Path("deploy"), help="a directory")
    render.add_argument(
        "--sim", action="store_true", help="Compose runs simulated cards; real engines in `gpu`"
    )
    render.add_argument(
        "--replicas", type=positive(int), help="render this many replicas (a demo on one host)"
    )
    render.add_argument(
        "--only", action="append", default=[], metavar="PATH", help="write only these files/dirs"
    )


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to serve")
    g.add_argument("--model", help="catalog model id or alias (see `cardinal catalog models`)")
    g.add_argument(
        "--model-config", type=Path, help="a Hugging Face config.json for any other model"
    )
    g.add_argument(
        "--quant", help="quantization id, e.g. awq, fp8, q4_k_m (with --search: a filter)"
    )
    g.add_argument(
        "--gpu", help="GPU id or alias, e.g. a100-80gb-sxm, 4090 (with --search: a filter)"
    )
    g.add_argument("--engine", help="vllm or llama.cpp (default: from the quantization's format)")
    w = p.add_argument_group("workload")
    w.add_argument("--target-qps", type=positive(float), required=True)
    w.add_argument("--prompt-tokens", type=positive(int), required=True)
    w.add_argument("--output-tokens", type=positive(int), required=True)
    w.add_argument(
        "--ttft-slo", type=duration, default=2.0, help="time to first token (default 2s)"
    )
    w.add_argument(
        "--tpot-slo", type=duration, default=0.05, help="time per output token (default 50ms)"
    )
    w.add_argument("--headroom", type=fraction, default=0.2, help="spare capacity (default 20%%)")
    w.add_argument(
        "--ramp",
        type=qps_list,
        default=(),
        help="growing targets, e.g. 25,50,75: replicas needed at each stage",
    )
    k = p.add_argument_group("engine and hardware")
    k.add_argument(
        "--kv-dtype",
        choices=sorted(KV_DTYPES),
        default="auto",
        help="KV cache type: vLLM auto or fp8 (--kv-cache-dtype); llama.cpp f16, q8_0 or q4_0 "
        "(-ctk/-ctv). Default auto: the model's dtype",
    )
    k.add_argument(
        "--mla-cache",
        choices=MLA_LAYOUTS,
        default="latent",
        help="llama.cpp DeepSeek cache layout: latent (current builds), latent-kv "
        "(builds before 2026-01), legacy (GGUFs converted before 2025-04)",
    )
    k.add_argument("--gpus-per-replica", type=positive(int), help="force TP size / split GPUs")
    k.add_argument("--max-gpus-per-replica", type=positive(int))
    k.add_argument(
        "--max-num-seqs",
        "--max-batch",
        dest="max_num_seqs",
        type=positive(int),
        metavar="N",
        help="cap on concurrent sequences per replica: vLLM --max-num-seqs, llama.cpp -np "
        "(default: the engine's, 256 for vLLM, 64 for llama.cpp)",
    )
    k.add_argument(
        "--max-num-batched-tokens",
        type=positive(int),
        metavar="N",
        help="vLLM's chunked-prefill token budget per step (default 8192)",
    )
    k.add_argument(
        "--gpu-memory-utilization",
        type=unit_fraction,
        metavar="F",
        help="vLLM's share of each GPU's memory, in (0, 1] (default 0.9)",
    )
    k.add_argument(
        "--gpu-layers",
        type=positive(int),
        metavar="N",
        help="llama.cpp: force -ngl N, the last N layers on the GPU (default: as many as fit)",
    )
    k.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default="roofline",
        help="how a step is timed: the fitted roofline (default, the more accurate on held-out "
        "serving points) or measured kernel tables (needs cardinal[profiled]); profiled prints "
        "both estimates",
    )
    k.add_argument("--gpu-price", type=positive(float), help="USD per GPU-hour (overrides catalog)")
    k.add_argument(
        "--per-card-qps",
        type=positive(float),
        help="use this per-card capacity instead of the model's (e.g. a measurement)",
    )
    k.add_argument(
        "--cpu-bandwidth",
        type=positive(float),
        default=100.0,
        help="effective host memory bandwidth in GB/s for offloaded weights",
    )
    k.add_argument("--cpu-ram", type=positive(float), help="host RAM in GiB (limits offload)")
    k.add_argument("--api-model", help="litellm key of the hosted API to compare against")


def request_from_args(args: argparse.Namespace, catalog: Catalog) -> PlanRequest:
    if bool(args.model) == bool(args.model_config):
        raise PlanError("give exactly one of --model and --model-config", field="model")
    for name in ("quant", "gpu"):
        if not getattr(args, name):
            raise PlanError(f"--{name} is required (or try them all with --search)", field=name)
    wl = workload_from_args(args)
    return request_for(
        catalog,
        model=args.model or _model_from_file(args.model_config),
        quant=args.quant,
        gpu=args.gpu,
        engine=args.engine,
        workload=wl,
        kv_dtype=args.kv_dtype,
        mla_cache=args.mla_cache,
        gpus_per_replica=args.gpus_per_replica,
        max_gpus_per_replica=args.max_gpus_per_replica,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        gpu_layers=args.gpu_layers,
        estimator=args.estimator,
        gpu_price_usd_per_hour=args.gpu_price,
        per_card_qps=args.per_card_qps,
        host_bandwidth_gb_s=args.cpu_bandwidth,
        cpu_ram_gib=args.cpu_ram,
        ramp_qps=args.ramp,
        api_model=args.api_model,
    )


def _model_from_file(path: Path) -> Model:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PlanError(f"cannot read {path}: {e.strerror}", field="model_config") from None
    except json.JSONDecodeError as e:
        raise PlanError(f"{path} is not JSON: {e}", field="model_config") from None
    if not isinstance(cfg, dict):
        raise PlanError(f"{path} must hold a JSON object", field="model_config")
    name = cfg.get("_name_or_path") or path.parent.name or path.stem
    return model_from_hf_config(
        cfg, id=str(name).split("/")[-1].lower(), name=str(name), source=str(path)
    )


def cmd_plan(args: argparse.Namespace, catalog: Catalog) -> int:
    check_flags(args)
    if args.search and args.calibration:
        raise PlanError("--calibration plans one fleet, not a search", field="calibration")
    if args.search and args.estimator != "roofline":
        raise PlanError(
            "--search ranks fleets with the roofline (the kernel tables cover only dense vLLM "
            "plans); profile one plan at a time",
            field="estimator",
        )
    if args.search:
        if bool(args.model) == bool(args.model_config):
            raise PlanError("give exactly one of --model and --model-config", field="model")
        model = catalog.model(args.model) if args.model else _model_from_file(args.model_config)
        return cmd_search(args, catalog, model=model)
    if args.calibration:
        plan, data = calibrated_plan(args, request_from_args(args, catalog), catalog)
    else:
        plan = make_plan(request_from_args(args, catalog), catalog)
        data = plan_dict(plan)
    if args.model_config:
        data["inputs"]["model_config"] = json.loads(args.model_config.read_text(encoding="utf-8"))
    if args.output:
        args.output.write_text(planfile.dump(data), encoding="utf-8")
    print(
        json.dumps(data, indent=2) if args.json else render_text(data) + calibration_text(data),
        end="" if not args.json else "\n",
    )
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
    table = render_document(catalog, checks)
    print(table, end="")
    if args.output:
        args.output.write_text(ACCURACY_HEADER + table, encoding="utf-8")
    size, decode = summary(checks, "size"), summary(checks, "decode_tps")
    ok = (
        (size["median_abs_error"] or 1) <= 0.03
        and (size["max_abs_error"] or 1) <= 0.08
        and (decode["median_abs_error"] or 1) <= 0.25
    )
    print(
        f"\ntargets (size median <= 3 %, every size row <= 8 %, decode median <= 25 %): "
        f"{'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


def cmd_seeds(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.reports.seeds import render_seeds

    text = render_seeds(catalog)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"written to {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_show(args: argparse.Namespace, catalog: Catalog) -> int:
    data = planfile.load(_read(args.plan))
    print(render_text(data) + calibration_text(data), end="")
    return 0


def cmd_sim(args: argparse.Namespace, catalog: Catalog) -> int:
    import asyncio

    from gateway.sim.fleet import serve_cards
    from gateway.sim.server import CardConfig

    name, card, replicas = _sim_card(args, catalog)
    cards = args.cards or replicas
    faults = _sim_faults(args.fault, cards=cards)
    configs = [
        CardConfig(
            model_name=name,
            speed=card.speed,
            engine=card.engine,
            tokens_per_event=args.tokens_per_event,
            faults=faults[i],
            seed=args.seed + i,
        )
        for i in range(cards)
    ]
    try:
        asyncio.run(serve_cards(configs, host=args.host, port=args.port))
    except OSError as e:  # a port taken: one line, like every other error
        print(f"cardinal sim: error: --port: cannot listen: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def cmd_serve(args: argparse.Namespace, catalog: Catalog) -> int:
    import os

    from gateway.server import config as gwconfig
    from gateway.server.runner import serve

    try:
        config = _serve_config(args, env=os.environ)
        if args.listen:
            host, port = gwconfig.parse_listen(args.listen)
            config = replace(config, host=host, port=port)
    except gwconfig.ConfigError as e:
        flag = "--config" if args.config else "--listen" if e.field == "listen" else "--plan"
        print(f"cardinal serve: error: {flag}: {e}", file=sys.stderr)
        return 2
    load = ConfigFile(path=args.config, listen=args.listen) if args.config else None
    try:
        serve(config, workers=args.workers, load=load)
    except OSError as e:  # the listen address taken or not ours: one line, like every other error
        print(f"cardinal serve: error: --listen: cannot listen: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


@dataclass(frozen=True)
class ConfigFile:
    """Reads gateway.yaml (and the environment) again, for a reload; picklable for workers."""

    path: Path
    listen: str | None = None

    def __call__(self) -> Any:
        import os

        from gateway.server import config as gwconfig

        config = _config_file(self.path, env=os.environ)
        if self.listen:
            host, port = gwconfig.parse_listen(self.listen)
            config = replace(config, host=host, port=port)
        return config


def _serve_config(args: argparse.Namespace, *, env: Any) -> Any:
    """The gateway config from --config, or from --plan and the replicas' URLs."""
    from gateway.server import config as gwconfig

    if args.config:
        if args.backends or args.base_port:
            raise PlanError("--backends and --base-port go with --plan", field="config")
        return _config_file(args.config, env=env)
    from gateway.render.gateway_config import serve_data

    plan = planfile.read(_read(args.plan))
    replicas = plan.replicas
    if args.backends:
        urls = args.backends
    elif args.base_port:
        urls = [f"http://127.0.0.1:{args.base_port + i}" for i in range(replicas)]
    else:
        raise PlanError("--plan needs --backends URL ... or --base-port PORT", field="backends")
    if len(urls) != replicas:
        print(f"cardinal serve: note: {len(urls)} backends, the plan has {replicas} replicas")
    listen = args.listen or "127.0.0.1:8080"
    return gwconfig.parse(serve_data(plan, urls=urls, listen=listen), env={})


def _config_file(path: Path, *, env: Any) -> Any:
    from gateway.server import config as gwconfig

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        # a ConfigError, so a reload that cannot read the file is rejected, not fatal
        raise gwconfig.ConfigError(f"cannot read {path}: {e.strerror}", field="(file)") from None
    beside = path.parent  # files the config names are relative to it
    return gwconfig.load(
        text, env=env, read=lambda name: (beside / name).read_text(encoding="utf-8")
    )


def cmd_render(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.render.bundle import render_all
    from gateway.render.errors import RenderError
    from gateway.render.fleet import scaled

    plan = planfile.load(_read(args.plan))
    try:
        files = render_all(
            scaled(plan, args.replicas) if args.replicas else plan,
            sim=args.sim,
            source=_build_context(args.output),
        )
    except RenderError as e:
        print(f"cardinal render: error: {e.field}: {e}", file=sys.stderr)
        return 2
    only = [o.rstrip("/") for o in args.only]
    for rel, text in files.items():
        if only and not any(rel == o or rel.startswith(o + "/") for o in only):
            continue
        path = args.output / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if rel.endswith(".sh"):
            path.chmod(0o755)
        print(f"wrote {path}")
    return 0


def _build_context(output: Path) -> str:
    """The repository (where the cardinal image is built from), relative to the output dir."""
    import os

    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").exists():  # installed, not a checkout: build from the output
        return "."
    return os.path.relpath(root, output.resolve())


def _sim_card(args: argparse.Namespace, catalog: Catalog) -> tuple[str, Card, int]:
    """(served model name, card, replicas) from --plan or from --model/--quant/--gpu."""
    from gateway.sim.card import card_from_catalog, card_from_plan

    named = [f for f in ("model", "quant", "gpu", "engine") if getattr(args, f)]
    if args.plan:
        if named:
            raise PlanError("give either --plan or --model/--quant/--gpu, not both", field=named[0])
        plan = planfile.read(_read(args.plan))
        card = card_from_plan(catalog, plan)
        if args.max_num_seqs:
            card = replace(card, engine=replace(card.engine, max_num_seqs=args.max_num_seqs))
        return catalog.model(plan.model).id, card, plan.replicas
    for f in ("model", "quant", "gpu"):
        if not getattr(args, f):
            raise PlanError(f"--{f} is required without --plan", field=f)
    card = card_from_catalog(
        catalog,
        model=args.model,
        quant=args.quant,
        gpu=args.gpu,
        engine=args.engine or "vllm",
        max_num_seqs=args.max_num_seqs,
    )
    return catalog.model(args.model).id, card, 1


def _sim_faults(specs: list[str], *, cards: int) -> list[Faults]:
    from gateway.sim.faults import FaultError, Faults, parse_fault_flag

    faults = [Faults() for _ in range(cards)]
    try:
        for spec in specs:
            indexes, changes = parse_fault_flag(spec, cards=cards)
            for i in indexes:
                faults[i] = faults[i].update(changes)
    except FaultError as e:
        raise PlanError(f"{spec}: {e}", field="fault") from None
    return faults


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise PlanError(f"cannot read {path}: {e.strerror}", field="plan") from None


def cmd_prove(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.prove.fleet import FleetError
    from gateway.prove.proof import ProveOptions, prove

    if args.gateway and args.backends:
        raise PlanError("give --gateway or --backends, not both", field="gateway")
    _read(args.plan)
    options = ProveOptions(
        plan_path=args.plan,
        report=args.report,
        duration_s=args.duration,
        target_qps=args.target_qps,
        cards=args.cards,
        backends=tuple(args.backends or ()),
        gateway=args.gateway,
        sweep=args.sweep,
        check_minimal=args.check_minimal,
        tokens_per_event=args.tokens_per_event,
    )
    try:
        return prove(options, say=lambda line: print(line, flush=True))
    except FleetError as e:
        print(f"cardinal prove: error: {e}", file=sys.stderr)
        return 2


COMMANDS = {
    "plan": cmd_plan,
    "catalog": cmd_catalog,
    "check-accuracy": cmd_accuracy,
    "seeds": cmd_seeds,
    "show": cmd_show,
    "sim": cmd_sim,
    "prove": cmd_prove,
    "serve": cmd_serve,
    "render": cmd_render,
    "calibrate": cmd_calibrate,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args, load_catalog())
    except (PlanError, planfile.PlanFileError) as e:
        flag = (
            "--" + e.field.replace("_", "-").split(".")[0] if isinstance(e, PlanError) else e.field
        )
        print(f"cardinal {args.command}: error: {flag}: {e}", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:
        print(f"cardinal {args.command}: error: not valid YAML: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
