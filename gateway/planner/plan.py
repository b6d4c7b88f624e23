"""A capacity plan: model x quantization x GPU x engine x workload -> fit, speed, fleet, cost."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.planner.capacity import (
    HOURS_PER_MONTH,
    ReplicaCapacity,
    replica_capacity,
    rollout,
    size_fleet,
)
from gateway.planner.catalog import Catalog
from gateway.planner.errors import PlanError
from gateway.planner.fit import Fit, FitInput, fit_options
from gateway.planner.hosted import api_price
from gateway.planner.kvcache import kv_bytes_per_token
from gateway.planner.request import (
    ENGINE_KV_DTYPES,
    ENGINE_ONLY,
    ESTIMATORS,
    KV_DTYPES,
    PlanRequest,
    check_engine_knobs,
    check_parallel,
    check_request,
    request_for,
)
from gateway.planner.speed import SpeedModel, active_params
from gateway.planner.weights import Weights, weights

# the request's names, for the modules that plan with them
__all__ = [
    "ENGINE_KV_DTYPES",
    "ENGINE_ONLY",
    "ESTIMATORS",
    "KV_DTYPES",
    "Plan",
    "PlanRequest",
    "check_engine_knobs",
    "check_parallel",
    "check_request",
    "request_for",
    "api_comparison",
    "engine_cap",
    "fit_input",
    "laid_out",
    "make_plan",
    "monthly_cost",
    "nearest_fits",
    "plan_for_fit",
    "speed_model",
]


@dataclass(frozen=True, kw_only=True)
class Plan:
    request: PlanRequest
    weights: Weights
    fit: Fit
    speed: SpeedModel | None
    replica: ReplicaCapacity | None
    replicas: int = 0
    ttft_s: float = math.nan
    tpot_s: float = math.nan
    utilization: float = math.nan
    limited_by: str = ""
    ramp: list[tuple[float, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # (estimator, GPUs, QPS per replica) of each estimate made, side by side: the profiled
    # estimator's plan carries the roofline's too
    estimates: tuple[tuple[str, int, float], ...] = ()

    @property
    def price(self) -> float | None:
        return self.request.gpu_price_usd_per_hour or self.request.gpu.price_usd_per_hour

    @property
    def gpus(self) -> int:
        return self.replicas * self.fit.gpus


def make_plan(req: PlanRequest, catalog: Catalog) -> Plan:
    """The plan for one request; a `none` fit carries the reason and the nearest options."""
    check_request(req, catalog)
    check_parallel(req)
    w = weights(req.model, req.quant, catalog)
    options = fit_options(fit_input(req, w))
    if not options[0].ok:
        fit = replace(options[0], nearest=nearest_fits(req, catalog))
        return Plan(
            request=req,
            weights=w,
            fit=fit,
            speed=None,
            replica=None,
            warnings=[f"does not fit: {fit.reason}"],
        )
    plans, refused = [], None
    for f in options:
        try:
            plans.append(_plan_for_fit(req, w, f))
        except PlanError as e:  # a placement the profiled estimator has no tables for
            if req.estimator == "roofline":
                raise
            refused = e
    if not plans:
        assert refused is not None
        raise refused
    best = min(plans, key=lambda p: (bool(p.replica and p.replica.problem), p.gpus, p.fit.gpus))
    if req.estimator == "roofline":
        return best
    roofline = make_plan(replace(req, estimator="roofline"), catalog)
    return replace(
        best,
        estimates=tuple(
            (p.request.estimator, p.gpus, p.replica.capacity_qps if p.replica else math.nan)
            for p in (best, roofline)
        ),
    )


def fit_input(req: PlanRequest, w: Weights) -> FitInput:
    """What the memory fit needs from a request."""
    return FitInput(
        model=req.model,
        weights=w,
        gpu=req.gpu,
        engine=req.engine,
        context=req.seq_tokens,
        kv_dtype_bytes=KV_DTYPES[req.kv_dtype],
        mla_layout=req.mla_cache,
        gpus_per_replica=req.gpus_per_replica,
        max_gpus_per_replica=req.max_gpus_per_replica,
        host_bandwidth_gb_s=req.host_bandwidth_gb_s,
        cpu_ram_gib=req.cpu_ram_gib,
        gpu_layers=req.gpu_layers,
        max_num_seqs=req.seqs_cap,
        max_num_batched_tokens=req.batched_tokens,
        gpu_memory_utilization=req.memory_utilization,
    )


def speed_model(req: PlanRequest, w: Weights, fit: Fit) -> SpeedModel:
    assert fit.placement is not None
    speed = SpeedModel(
        model=req.model,
        quant=req.quant,
        gpu=req.gpu,
        engine=req.engine,
        placement=fit.placement,
        kv_bytes_per_token_gpu=fit.kv_bytes_per_token_gpu,
        active_params=active_params(req.model, params_by_group=w.params_by_group()),
        max_num_batched_tokens=req.max_num_batched_tokens,
    )
    if req.estimator == "profiled":
        from gateway.planner.profiled import profiled  # noqa: PLC0415 - optional tables

        return profiled(speed, kv_dtype=req.kv_dtype)
    return speed


def laid_out(req: PlanRequest, catalog: Catalog) -> tuple[Fit, SpeedModel | None]:
    """The request's first placement (fewest GPUs) and its speed model; None when it does not
    fit (the fit says why). What a measured row is predicted on: no fleet, no SLOs."""
    w = weights(req.model, req.quant, catalog)
    fit = fit_options(fit_input(req, w))[0]
    return fit, speed_model(req, w, fit) if fit.ok else None


def plan_for_fit(req: PlanRequest, w: Weights, fit: Fit) -> Plan:
    """The plan for one given placement (make_plan keeps only the one with the fewest GPUs)."""
    return _plan_for_fit(req, w, fit)


def _plan_for_fit(req: PlanRequest, w: Weights, fit: Fit) -> Plan:
    wl = req.workload
    speed = speed_model(req, w, fit)
    rep = replica_capacity(
        speed, wl, kv_tokens=fit.kv_tokens, cap=engine_cap(req), seq_tokens=req.seq_tokens
    )
    warnings = _warnings(req, fit, rep)
    if req.per_card_qps:
        rep = replace(
            rep, capacity_qps=req.per_card_qps * fit.gpus, batch_limit="given", problem=""
        )
        warnings.append(f"per-card capacity {req.per_card_qps:g} QPS was given, not modelled")
    fleet = size_fleet(None if req.per_card_qps else speed, rep, wl)
    ramp = rollout(speed, rep, wl, list(req.ramp_qps)) if req.ramp_qps else []
    return Plan(
        request=req,
        weights=w,
        fit=fit,
        speed=speed,
        replica=rep,
        replicas=fleet.replicas,
        ttft_s=fleet.ttft_s,
        tpot_s=fleet.tpot_s,
        utilization=fleet.utilization,
        limited_by=fleet.limited_by,
        ramp=ramp,
        warnings=warnings,
    )


def engine_cap(req: PlanRequest) -> int:
    """The batch the engine's limits allow: max_num_seqs, and for vLLM the step's token budget
    too (each running sequence takes one token of it per decode step)."""
    if req.engine.multi_gpu != "tensor_parallel":
        return req.seqs_cap
    return min(req.seqs_cap, req.batched_tokens)


def _warnings(req: PlanRequest, fit: Fit, rep: ReplicaCapacity) -> list[str]:
    out = []
    if rep.problem:
        out.append(f"SLO unreachable on this configuration: {rep.problem}")
    if fit.kind in ("partial_offload", "moe_offload"):
        out.append(
            f"weights in host RAM ({fit.cpu_ram_gib:.1f} GiB) are read over the CPU's "
            f"memory bus (assumed {req.host_bandwidth_gb_s:g} GB/s effective; set "
            "--cpu-bandwidth): decode speed depends on it more than on the GPU"
        )
    if req.model.mla and req.engine.id == "llama.cpp" and req.mla_cache != "latent":
        kv = kv_bytes_per_token(req.model, req.engine, dtype_bytes=2, mla_layout=req.mla_cache)
        kv_kib = kv / 1024
        out.append(f"MLA cache layout {req.mla_cache!r}: KV per token is {kv_kib:.0f} KiB")
    if req.gpu.price_usd_per_hour is None and req.gpu_price_usd_per_hour is None:
        out.append(f"no sourced hourly price for {req.gpu.name}; pass --gpu-price for costs")
    return out


def nearest_fits(req: PlanRequest, catalog: Catalog, *, limit: int = 3) -> list[str]:
    """Closest configurations that fit, each changing as little as it can: more GPUs of the same
    kind, a smaller quantization, a bigger GPU, and both together."""
    same_format = [q for q in catalog.quants.values() if q.format == req.quant.format]
    size = {q.id: weights(req.model, q, catalog).total_bytes for q in same_format}
    quants = [req.quant] + sorted(
        (q for q in same_format if size[q.id] < size[req.quant.id]), key=lambda q: -size[q.id]
    )
    gpus = [req.gpu] + sorted(
        (
            g
            for g in catalog.gpus.values()
            if g.memory_gib > req.gpu.memory_gib and not g.reference_only
        ),
        key=lambda g: g.memory_gib,
    )
    found: list[str] = []
    for quant in quants:
        for gpu in gpus:
            if len(found) == limit:
                return found
            trial = replace(
                req, quant=quant, gpu=gpu, gpus_per_replica=None, max_gpus_per_replica=None
            )
            fit = fit_options(fit_input(trial, weights(req.model, quant, catalog)))[0]
            if fit.ok and not any(f"--gpu {gpu.id} " in f for f in found):
                found.append(
                    f"--quant {quant.id} --gpu {gpu.id} ({fit.gpus} per replica, {fit.kind})"
                )
    return found


def monthly_cost(plan: Plan) -> float | None:
    return None if plan.price is None else plan.gpus * plan.price * HOURS_PER_MONTH


def api_comparison(plan: Plan) -> dict[str, Any] | None:
    req = plan.request
    price = api_price(req.api_model or req.model.hosted_api)
    if price is None:
        return None
    wl = req.workload
    api = price.monthly_usd(
        qps=wl.target_qps,
        prompt_tokens=wl.prompt_tokens,
        output_tokens=wl.output_tokens,
        hours=HOURS_PER_MONTH,
    )
    own = monthly_cost(plan)
    return {
        "model": price.key,
        "monthly_usd": round(api, 2),
        "input_usd_per_million": price.input_usd_per_token * 1e6,
        "output_usd_per_million": price.output_usd_per_token * 1e6,
        "self_hosted_to_api_ratio": None if own is None or api == 0 else round(own / api, 3),
        "source": price.source,
    }
