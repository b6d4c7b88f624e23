"""What every seed check shares: a claim beside Cardinal's figure, its verdict, and the plans
and reference figures the checks quote."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.planner.accuracy import read_rows
from gateway.planner.capacity import Workload
from gateway.planner.catalog import Catalog, Model
from gateway.planner.plan import Plan, make_plan, request_for
from gateway.planner.weights import Weights


@dataclass(frozen=True, kw_only=True)
class Claim:
    claim: str
    cardinal: str
    verdict: str


def verdict(seed: float, ours: float, *, tol: float, why: str) -> str:
    """`agrees` within a relative tolerance, else `wrong: <why>`."""
    if ours and abs(seed - ours) / abs(ours) <= tol:
        return "agrees"
    return f"wrong: {why}"


def seed_plan(
    catalog: Catalog,
    *,
    model: str,
    quant: str,
    gpu: str,
    engine: str,
    qps: float,
    prompt: int = 512,
    output: int = 256,
    ttft: float = 2.0,
    tpot: float = 0.05,
    headroom: float = 0.2,
    **knobs: Any,
) -> Plan:
    wl = Workload(
        prompt_tokens=prompt,
        output_tokens=output,
        target_qps=qps,
        ttft_slo_s=ttft,
        tpot_slo_s=tpot,
        headroom=headroom,
    )
    req = request_for(
        catalog, model=model, quant=quant, gpu=gpu, engine=engine, workload=wl, **knobs
    )
    return make_plan(req, catalog)


def active_expert_gb(w: Weights, m: Model) -> float:
    """Routed-expert bytes one token reads (k of E experts in every MoE layer)."""
    assert m.moe is not None
    return w.bytes_by_group()["experts"] * m.moe.active_experts / m.moe.routed_experts / 1e9


def measured(kind: str, model: str, quant: str, gpu_prefix: str) -> float:
    """A figure from the bundled reference.csv, so the docs quote the data, not a copy of it."""
    rows = [r for r in read_rows() if (r.kind, r.model, r.quant) == (kind, model, quant)]
    return next(r.value for r in rows if r.gpu.startswith(gpu_prefix))
