"""What a simulated card is: one replica's speed model and engine limits, taken from the planner."""

from __future__ import annotations

from dataclasses import dataclass

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
