"""`cardinal plan`: one plan from flags or a model config, or a search over GPUs and quants."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway import planfile
from gateway.cli.args import (
    duration,
    fraction,
    positive,
    qps_list,
    unit_fraction,
    write_text,
)
from gateway.cli.calibrate import (
    calibrated_plan,
    calibration_text,
)
from gateway.cli.search import check_flags, cmd_search, workload_from_args
from gateway.planner.catalog import Catalog, Model, model_from_hf_config
from gateway.planner.errors import PlanError
from gateway.planner.kvcache import MLA_LAYOUTS
from gateway.planner.plan import ESTIMATORS, KV_DTYPES, PlanRequest, make_plan, request_for
from gateway.planner.report import plan_dict, render_text
from gateway.planner.scale_report import LAYOUTS, MTP_MODES, at_scale, render_at_scale


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
    x = p.add_argument_group("MoE at scale (DeepSeek: expert parallelism, DP attention, PD, MTP)")
    x.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="auto: the tensor-parallel plan and, for DeepSeek-style MoE models on HBM GPUs, the "
        "cheapest EP/DP and prefill/decode-disaggregated layouts beside it; tp: only the former; "
        "ep or pd: only that kind of layout at scale",
    )
    x.add_argument(
        "--mtp",
        choices=MTP_MODES,
        default="auto",
        help="multi-token prediction at scale: auto tries with and without (models with an MTP "
        "module), on or off forces it",
    )
    x.add_argument(
        "--spec-accept",
        type=unit_fraction,
        metavar="F",
        help="acceptance rate of the MTP draft token (default 0.85: DeepSeek-V3 reports 85-90 %%)",
    )


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
    scale = _at_scale(args, plan, catalog)
    if scale:
        data["at_scale"] = scale
    if args.output:
        write_text(args.output, planfile.dump(data))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        tp_gpus = data["fleet"]["gpus"] if plan.fit.ok else None
        text = "\n".join(render_at_scale(scale, tp_gpus=tp_gpus))
        print(render_text(data) + (text + "\n" if text else "") + calibration_text(data), end="")
    if args.output and not args.json:
        print(f"\nplan written to {args.output}")
    return 0 if plan.fit.ok or (scale and scale["layouts"]) else 1


def _at_scale(args: argparse.Namespace, plan: Any, catalog: Catalog) -> dict[str, Any] | None:
    req = plan.request
    return at_scale(
        catalog,
        model=req.model,
        quant=req.quant.id,
        gpu=req.gpu.id,
        workload=req.workload,
        layout=args.layout,
        mtp=args.mtp,
        accept=args.spec_accept,
        price=args.gpu_price,
    )
