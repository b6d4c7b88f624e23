"""What a simulated card is: one replica's speed model and engine limits, taken from the planner."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import planfile
from gateway.planfile import PlanFile, PlanFileError
from gateway.planner.capacity import Workload
from gateway.planner.catalog import Catalog
from gateway.planner.errors import PlanError
from gateway.planner.plan import make_plan, request_for
from gateway.planner.speed import SpeedModel
from gateway.sim.engine import EngineConfig


@dataclass(frozen=True, kw_only=True)
class Card:
    speed: SpeedModel
    engine: EngineConfig


def card_from_catalog(
    catalog: Catalog,
    *,
    model: str,
    quant: str,
    gpu: str,
    engine: str = "vllm",
    max_num_seqs: int | None = None,
) -> Card:
    """The replica the planner would deploy for this model x quant x GPU (workload is nominal:
    only the fit and the speed model are used)."""
    workload = Workload(
        prompt_tokens=512, output_tokens=256, target_qps=1.0, ttft_slo_s=2.0, tpot_slo_s=0.05
    )
    req = request_for(catalog, model=model, quant=quant, gpu=gpu, engine=engine, workload=workload)
    plan = make_plan(req, catalog)
    eng = req.engine
    if plan.speed is None:
        raise PlanError(f"{model} {quant} does not fit on {gpu}: {plan.fit.reason}", field="gpu")
    config = EngineConfig(
        kv_tokens=plan.fit.kv_tokens,
        max_num_seqs=max_num_seqs or eng.max_num_seqs,
        max_num_batched_tokens=eng.max_num_batched_tokens,
        max_model_len=req.model.max_context,
    )
    return Card(speed=plan.speed, engine=config)


def card_from_plan(catalog: Catalog, plan: PlanFile | Mapping[str, Any]) -> Card:
    """The replica a validated plan file describes: its speed model re-derived from the plan's
    inputs (and checked against the figures the file records), its engine limits as written."""
    p = planfile.of(plan)
    inputs, fit = p.inputs, p.fit
    if not p.fits:
        raise PlanFileError(f"the plan does not fit: {fit.get('reason')}", field="fit.kind")
    workload = p.workload
    try:
        req = request_for(
            catalog,
            model=p.model,
            quant=p.quant,
            gpu=p.gpu,
            engine=p.engine,
            workload=workload,
            kv_dtype=inputs.get("kv_dtype", "auto"),
            mla_cache=inputs.get("mla_cache", "latent"),
            host_bandwidth_gb_s=inputs.get("cpu_bandwidth_gb_s", 100.0),
            gpus_per_replica=fit.get("gpus"),
            gpu_layers=fit.get("gpu_layers"),
            max_num_batched_tokens=inputs.get("max_num_batched_tokens"),
            gpu_memory_utilization=inputs.get("gpu_memory_utilization"),
            estimator=inputs.get("estimator", "roofline"),
        )
    except PlanError as e:
        raise PlanFileError(str(e), field=f"inputs.{e.field}") from None
    speed = make_plan(req, catalog).speed
    recorded = p.speed.get("decode_tokens_per_s_batch1")
    if speed is None or not recorded:
        raise PlanFileError("the plan records no speed", field="speed")
    derived = speed.decode_tokens_per_s(ctx=workload.mean_decode_context)
    if abs(derived / recorded - 1) > 0.01:
        raise PlanFileError(
            f"the plan records {recorded} tokens/s at batch 1 but this Cardinal derives "
            f"{derived:.2f} from its inputs; re-run `cardinal plan`",
            field="speed.decode_tokens_per_s_batch1",
        )
    settings = p.engine_settings
    seqs = p.replica_concurrency
    kv_tokens = p.memory.get("kv_cache_tokens")
    for field, value in (
        ("engine_settings.max_num_seqs", seqs),
        ("memory.kv_cache_tokens", kv_tokens),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise PlanFileError(f"`{field}` must be a positive integer, got {value!r}", field=field)
    config = EngineConfig(
        kv_tokens=kv_tokens,
        max_num_seqs=seqs,
        max_num_batched_tokens=max(
            settings.get("max_num_batched_tokens") or req.engine.max_num_batched_tokens, seqs
        ),
        max_model_len=settings.get("max_model_len")
        or settings.get("ctx_size", 0) // seqs  # llama.cpp: each slot gets ctx_size / parallel
        or req.model.max_context,
    )
    return Card(speed=speed, engine=config)
