"""The deploy-side view of a plan file: names, ports, engine and capacity, shared by renderers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.planner.catalog import load_catalog
from gateway.planner.errors import PlanError
from gateway.render.checkpoint import Checkpoint, checkpoint
from gateway.render.errors import RenderError

ENGINE_PORT = 8000  # vLLM's default; llama-server is given the same so every backend looks alike
GATEWAY_PORT = 8080
VERSION = "0.1.0"  # the cardinal image tag the gateway and simulated cards run


@dataclass(frozen=True, kw_only=True)
class Fleet:
    model: str  # the served model name clients send, the catalog id
    model_name: str  # human name, for comments and dashboards
    quant: str
    gpu: str
    engine: str  # vllm | llama.cpp
    replicas: int
    gpus_per_replica: int
    max_inflight: int  # per replica: vLLM max_num_seqs, llama.cpp -np
    capacity_qps: float  # per replica, from the plan
    target_qps: float
    headroom: float
    ttft_slo_s: float
    tpot_slo_s: float
    cpu_ram_gib: float
    settings: Mapping[str, Any]
    checkpoint: Checkpoint

    @property
    def is_vllm(self) -> bool:
        return self.engine == "vllm"

    def engine_host(self, i: int) -> str:
        return f"engine-{i}"

    @property
    def capacity_total_qps(self) -> float:
        return round(self.capacity_qps * self.replicas, 6)


def fleet_from_plan(plan: Mapping[str, Any]) -> Fleet:
    """The fleet a validated plan (`planfile.load`) describes; errors name the plan field."""
    inputs, wl = plan["inputs"], plan["inputs"]["workload"]
    settings = plan.get("engine_settings")
    if not settings:
        raise RenderError(
            "the plan does not fit (no `engine_settings`): nothing to deploy",
            field="engine_settings",
        )
    if plan["replica"]["capacity_qps"] is None:
        raise RenderError("`replica.capacity_qps` is null", field="replica.capacity_qps")
    catalog = load_catalog()
    try:
        quant = catalog.quant(inputs["quant"])
    except PlanError:
        raise RenderError(
            f"unknown quantization {inputs['quant']!r}", field="inputs.quant"
        ) from None
    try:
        model = catalog.model(inputs["model"])
        model_id, model_name = model.id, model.name
    except PlanError:  # a plan from --model-config: no catalog entry, the name stands in
        model_id = model_name = inputs["model"]
    engine = catalog.engine(inputs["engine"]).id
    batch = settings.get("max_num_seqs") or settings.get("parallel") or plan["replica"]["max_batch"]
    return Fleet(
        model=model_id,
        model_name=model_name,
        quant=quant.id,
        gpu=inputs["gpu"],
        engine=engine,
        replicas=plan["fleet"]["replicas"],
        gpus_per_replica=plan["replica"]["gpus"] or 1,
        max_inflight=int(batch or 1),
        capacity_qps=float(plan["replica"]["capacity_qps"]),
        target_qps=float(wl["target_qps"]),
        headroom=float(wl["headroom"]),
        ttft_slo_s=float(wl["ttft_slo_s"]),
        tpot_slo_s=float(wl["tpot_slo_s"]),
        cpu_ram_gib=float(plan["memory"].get("cpu_ram_gib") or 0.0),
        settings=settings,
        checkpoint=checkpoint(model_id, quant),
    )


def scaled(plan: Mapping[str, Any], replicas: int) -> dict[str, Any]:
    """The plan with `replicas` replicas (a demo on one host), capacity and GPUs to match."""
    if replicas < 1:
        raise RenderError(f"replicas must be >= 1, got {replicas}", field="fleet.replicas")
    out = {**plan, "fleet": {**plan["fleet"], "replicas": replicas}}
    out["fleet"]["gpus"] = replicas * (plan["replica"]["gpus"] or 1)
    return out
