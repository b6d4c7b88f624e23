"""A plan as data (the plan file and `--json`) and as a readable report."""

from __future__ import annotations

import math
import textwrap
from typing import Any

from gateway.planner.capacity import HOURS_PER_MONTH
from gateway.planner.fit import GIB
from gateway.planner.kvcache import kv_bytes_per_token
from gateway.planner.plan import KV_DTYPES, Plan, api_comparison, engine_cap, monthly_cost
from gateway.planner.uncertainty import uncertainty

PLAN_VERSION = 1
SHOWN_IN_FIT = ("tensor_parallel_size", "pipeline_parallel_size", "n_cpu_moe", "split_gpus")


def _r(x: float | None, nd: int = 3) -> float | None:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return round(x, nd)


def inputs_dict(plan: Plan) -> dict[str, Any]:
    req, wl = plan.request, plan.request.workload
    return {
        "model": req.model.id,
        "quant": req.quant.id,
        "gpu": req.gpu.id,
        "engine": req.engine.id,
        "workload": {
            "prompt_tokens": wl.prompt_tokens,
            "output_tokens": wl.output_tokens,
            "target_qps": wl.target_qps,
            "ttft_slo_s": wl.ttft_slo_s,
            "tpot_slo_s": wl.tpot_slo_s,
            "headroom": wl.headroom,
        },
        "kv_dtype": req.kv_dtype,
        "mla_cache": req.mla_cache,
        "gpu_price_usd_per_hour": plan.price,
        "per_card_qps": req.per_card_qps,
        "cpu_bandwidth_gb_s": req.host_bandwidth_gb_s,
        # the engine knobs as asked for; null: the engine's default (engine_settings has the value)
        "gpus_per_replica": req.gpus_per_replica,
        "max_num_seqs": req.max_num_seqs or req.max_batch,
        "max_num_batched_tokens": req.max_num_batched_tokens,
        "gpu_memory_utilization": req.gpu_memory_utilization,
        "gpu_layers": req.gpu_layers,
        "estimator": req.estimator,
    }


def engine_settings(plan: Plan) -> dict[str, Any]:
    """What each replica's engine must be started with for the plan to hold."""
    fit, req = plan.fit, plan.request
    batch = plan.replica.max_batch if plan.replica else 1
    ctx = req.seq_tokens  # a llama.cpp slot: the request and its chat template
    if req.engine.multi_gpu == "tensor_parallel":
        return {
            "tensor_parallel_size": fit.tp,
            "pipeline_parallel_size": fit.pp,
            "max_num_seqs": batch,
            # the longest request vLLM accepts; the KV pool is shared, so allowing long requests
            # costs no memory (the batch limit is max_num_seqs), while the plan's mean length
            # would turn every longer-than-average prompt into a 400
            "max_model_len": min(req.model.max_context, fit.kv_tokens),
            "max_num_batched_tokens": req.batched_tokens,
            "gpu_memory_utilization": req.memory_utilization,
            "kv_cache_dtype": req.kv_dtype,
        }
    return {
        "gpu_layers": fit.gpu_layers,
        "n_cpu_moe": fit.n_cpu_moe,
        "parallel": batch,
        "ctx_size": ctx * batch,
        "split_gpus": fit.pp,
        "cache_type": req.kv_dtype,
        "flash_attn": req.kv_dtype not in ("auto", "f16", "fp16"),
    }


def batch_limit_text(plan: Plan) -> str:
    """What set the replica's batch, in words: `max_num_seqs (engine default 256)`."""
    req, rep = plan.request, plan.replica
    assert rep is not None
    if rep.batch_limit == "engine_cap":
        if engine_cap(req) < req.seqs_cap:
            name, value, given = (
                "max_num_batched_tokens",
                req.batched_tokens,
                req.max_num_batched_tokens,
            )
        else:
            name, value, given = "max_num_seqs", req.seqs_cap, req.max_num_seqs or req.max_batch
        flag = "--" + name.replace("_", "-")
        return f"{name} {value} ({flag})" if given else f"{name} (engine default {value})"
    return {
        "kv_memory": f"KV memory ({plan.fit.kv_tokens:,} tokens of cache, "
        f"{req.workload.context:,} per request)",
        "tpot_slo": f"the TPOT SLO ({req.workload.tpot_slo_s * 1e3:g} ms)",
        "given": "the given per-card capacity (--per-card-qps)",
    }.get(rep.batch_limit, rep.batch_limit)


def plan_dict(plan: Plan) -> dict[str, Any]:
    req, fit, rep, sp = plan.request, plan.fit, plan.replica, plan.speed
    wl = req.workload
    monthly = monthly_cost(plan)
    out_tok_h = wl.target_qps * wl.output_tokens * 3600
    hourly = None if monthly is None else monthly / HOURS_PER_MONTH
    groups = plan.weights.bytes_by_group()
    tp_engine = req.engine.multi_gpu == "tensor_parallel"
    kv_alloc = fit.kv_tokens if tp_engine or not rep else rep.max_batch * req.seq_tokens
    kv_tok = kv_bytes_per_token(
        req.model, req.engine, dtype_bytes=KV_DTYPES[req.kv_dtype], mla_layout=req.mla_cache
    )
    return {
        "version": PLAN_VERSION,
        "inputs": inputs_dict(plan),
        "memory": {
            "weights_gib": _r(plan.weights.total_bytes / GIB),
            "bits_per_weight": _r(plan.weights.bits_per_weight(), 4),
            "weights_by_group_gib": {k: _r(v / GIB) for k, v in sorted(groups.items())},
            "kv_bytes_per_token": _r(kv_tok, 1),
            "kv_cache_tokens": fit.kv_tokens if fit.ok else None,
            "gpu_gib": _r(fit.gpu_gib_per_gpu(kv_tokens=None if tp_engine else kv_alloc))
            if fit.ok
            else None,
            "kv_cache_allocated_tokens": kv_alloc if fit.ok else None,
            "gpu_total_gib": req.gpu.memory_gib,
            "cpu_ram_gib": _r(fit.cpu_ram_gib) if fit.ok else None,
        },
        "fit": {
            "kind": fit.kind,
            "tensor_parallel": fit.tp,
            "pipeline_parallel": fit.pp,
            "gpus": fit.gpus if fit.ok else None,
            "gpu_layers": fit.gpu_layers,
            "n_cpu_moe": fit.n_cpu_moe,
            "reason": fit.reason or None,
            "nearest": fit.nearest,
        },
        "speed": {
            "decode_tokens_per_s_batch1": _r(sp.decode_tokens_per_s(ctx=wl.mean_decode_context), 2)
            if sp
            else None,
            "prefill_tokens_per_s": _r(wl.prompt_tokens / sp.prefill_s(wl.prompt_tokens), 1)
            if sp
            else None,
            "ttft_s": _r(plan.ttft_s),
            "tpot_s": _r(plan.tpot_s, 4),
        },
        "replica": {
            "gpus": fit.gpus if fit.ok else None,
            "max_batch": rep.max_batch if rep else None,
            "batch_limit": rep.batch_limit if rep else None,
            "batch_limited_by": batch_limit_text(plan) if rep else None,
            "capacity_qps": _r(rep.capacity_qps) if rep else None,
            "per_card_qps": _r(rep.capacity_qps / fit.gpus) if rep else None,
            "slo_problem": (rep.problem or None) if rep else None,
        },
        "fleet": {
            "replicas": plan.replicas,
            "gpus": plan.gpus,
            "utilization": _r(plan.utilization),
            "limited_by": plan.limited_by or None,
            "ramp": [{"target_qps": q, "replicas": n, "gpus": n * fit.gpus} for q, n in plan.ramp],
            "uncertainty": _uncertainty(plan),
            "estimates": [
                {"estimator": e, "gpus": g, "capacity_qps": _r(q)} for e, g, q in plan.estimates
            ],
        },
        "cost": {
            "gpu_usd_per_hour": plan.price,
            "monthly_usd": _r(monthly, 2),
            "usd_per_million_output_tokens": _r(hourly / out_tok_h * 1e6, 4) if hourly else None,
            "usd_per_thousand_requests": _r(hourly / (wl.target_qps * 3600) * 1e3, 4)
            if hourly
            else None,
            "price_source": req.gpu.price_source or None,
        },
        "hosted_api": api_comparison(plan) if fit.ok else None,
        "engine_settings": engine_settings(plan) if fit.ok else None,
        "warnings": plan.warnings,
    }


def _uncertainty(plan: Plan) -> dict[str, Any] | None:
    u = uncertainty(plan)
    return None if u is None else {**u.to_dict(), "line": u.line()}


def render_text(d: dict[str, Any]) -> str:
    """The plan dict as the report `cardinal plan` prints."""
    i, m, f, s, r, fl, c = (
        d[k] for k in ("inputs", "memory", "fit", "speed", "replica", "fleet", "cost")
    )
    w = i["workload"]
    lines = [
        f"Cardinal plan: {i['model']} {i['quant']} on {i['gpu']} with {i['engine']}",
        f"  workload: {w['prompt_tokens']} prompt + {w['output_tokens']} output tokens, "
        f"{w['target_qps']:g} QPS, TTFT <= {w['ttft_slo_s']:g} s, "
        f"TPOT <= {w['tpot_slo_s'] * 1e3:g} ms, "
        f"headroom {w['headroom']:.0%}",
        "",
        "Memory",
        f"  weights            {m['weights_gib']:.2f} GiB ({m['bits_per_weight']:.2f} bits/weight)",
        f"  KV cache per token {_fmt(m['kv_bytes_per_token'], '{:,.0f} B')}",
    ]
    if f["kind"] == "none":
        lines += ["", "Fit: none", f"  {f['reason']}"]
        lines += [f"  would fit: {n}" for n in f["nearest"]] or ["  nothing nearby fits"]
        return "\n".join(lines + _warn(d)) + "\n"
    lines += [
        f"  per GPU            {m['gpu_gib']:.2f} of {m['gpu_total_gib']:g} GiB "
        f"(KV room: {m['kv_cache_tokens']:,} tokens)",
        f"  host RAM           {m['cpu_ram_gib']:.2f} GiB",
        "",
        f"Fit: {f['kind']}  " + _fit_detail(f, forced=i.get("gpu_layers") is not None),
        "",
        "Speed (per replica)",
        f"  decode, batch 1    {s['decode_tokens_per_s_batch1']:.1f} tokens/s",
        f"  prefill            {s['prefill_tokens_per_s']:,.0f} tokens/s",
        f"  max batch          {r['max_batch']}, limited by "
        f"{r.get('batch_limited_by') or r['batch_limit']}",
        f"  capacity           {r['capacity_qps']:.3f} QPS per replica of {r['gpus']} GPU(s) "
        f"= {r['per_card_qps']:.3f} QPS per card",
        *_settings_lines(d.get("engine_settings") or {}),
        "",
        "Fleet",
        f"  replicas           {fl['replicas']} x {r['gpus']} = {fl['gpus']} GPUs "
        f"(utilization {fl['utilization']:.0%} at target, sized by {fl['limited_by']})",
        f"  expected at target TTFT {_fmt(s['ttft_s'], '{:.2f} s')}, TPOT "
        f"{_fmt(s['tpot_s'] and s['tpot_s'] * 1e3, '{:.1f} ms')}",
    ]
    if (u := fl.get("uncertainty")) is not None:
        lines.append(f"  uncertainty        {u['line']}")
    if est := fl.get("estimates"):
        lines.append(
            "  estimates          "
            + "; ".join(
                f"{e['estimator']} {e['gpus']} GPUs ({_fmt(e['capacity_qps'], '{:.3f}')} QPS "
                "per replica)"
                for e in est
            )
        )
    lines += [
        f"  ramp: {st['target_qps']:g} QPS -> {st['replicas']} replicas ({st['gpus']} GPUs)"
        for st in fl["ramp"]
    ]
    lines += ["", "Cost"]
    if c["monthly_usd"] is None:
        lines.append("  no GPU price (pass --gpu-price)")
    else:
        lines += [
            f"  ${c['monthly_usd']:,.0f}/month at ${c['gpu_usd_per_hour']:g}/GPU-hour",
            f"  ${c['usd_per_million_output_tokens']:.3f} per million output tokens, "
            f"${c['usd_per_thousand_requests']:.3f} per thousand requests",
        ]
    api = d.get("hosted_api")
    if api:
        ratio = api["self_hosted_to_api_ratio"]
        lines.append(
            f"  hosted API {api['model']}: ${api['monthly_usd']:,.0f}/month for the same "
            f"traffic" + (f" (self-hosting costs {ratio:.2f}x)" if ratio else "")
        )
    return "\n".join(lines + _warn(d)) + "\n"


def _fit_detail(f: dict[str, Any], *, forced: bool = False) -> str:
    if f["kind"] == "moe_offload":
        return (
            f"-ngl {f['gpu_layers']} --n-cpu-moe {f['n_cpu_moe']} "
            "(attention, dense and shared-expert weights and the KV cache on the GPU; routed "
            "experts of the first n-cpu-moe layers in host RAM)"
        )
    if f["kind"] == "partial_offload":
        n = f["gpu_layers"]
        why = " as --gpu-layers asks" if forced else ""
        return f"-ngl {n} (the last {n} layers on the GPU{why}, the rest on the CPU)"
    if f["pipeline_parallel"] > 1 and f["tensor_parallel"] == 1:
        return f"layer split over {f['pipeline_parallel']} GPUs"
    if f["pipeline_parallel"] > 1:
        return (
            f"tensor parallel {f['tensor_parallel']} x pipeline parallel {f['pipeline_parallel']}"
        )
    return f"tensor parallel {f['tensor_parallel']}"


def _settings_lines(settings: dict[str, Any]) -> list[str]:
    """The engine settings the plan holds for, wrapped: `max_num_seqs 18, kv_cache_dtype fp8`."""
    shown = [
        f"{k} {_setting(v)}"
        for k, v in settings.items()
        if v is not None and v is not False and k not in SHOWN_IN_FIT
    ]
    wrapped = textwrap.wrap(", ".join(shown), width=76) or ["(none)"]
    return [f"  engine settings    {wrapped[0]}", *(" " * 21 + line for line in wrapped[1:])]


def _setting(v: Any) -> str:
    return "on" if v is True else f"{v:g}" if isinstance(v, float) else str(v)


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else spec.format(x)


def _warn(d: dict[str, Any]) -> list[str]:
    return ["", "Warnings"] + [f"  - {w}" for w in d["warnings"]] if d["warnings"] else []
