"""The deploy-side view of a plan file: names, ports, engine and capacity, shared by renderers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import planfile
from gateway.planfile import PlanFile
from gateway.planner.catalog import load_catalog
from gateway.planner.errors import PlanError
from gateway.render.checkpoint import Checkpoint, checkpoint
from gateway.render.errors import RenderError

ENGINE_PORT = 8000  # vLLM's default; llama-server is given the same so every backend looks alike
GATEWAY_PORT = 8080
VERSION = "0.1.0"  # the cardinal image tag the gateway and simulated cards run
SERVE_SLOTS = 64  # a replica's in-flight requests when the plan names no batch


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
    context_tokens: int  # prompt + output of one request
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


def fleet_from_plan(plan: PlanFile | Mapping[str, Any]) -> Fleet:
    """The fleet a validated plan (`planfile.read`, or a mapping `planfile.load` returns)
    describes; errors name the plan field."""
    p = planfile.of(plan)
    if not p.engine_settings:
        raise RenderError(
            "the plan does not fit (no `engine_settings`): nothing to deploy",
            field="engine_settings",
        )
    if p.replica.capacity_qps is None:
        raise RenderError("`replica.capacity_qps` is null", field="replica.capacity_qps")
    catalog = load_catalog()
    try:
        quant = catalog.quant(p.quant)
    except PlanError:
        raise RenderError(f"unknown quantization {p.quant!r}", field="inputs.quant") from None
    try:
        model = catalog.model(p.model)
        model_id, model_name = model.id, model.name
    except PlanError:  # a plan from --model-config: no catalog entry, the name stands in
        model_id = model_name = p.model
    wl = p.workload
    return Fleet(
        model=model_id,
        model_name=model_name,
        quant=quant.id,
        gpu=p.gpu,
        engine=catalog.engine(p.engine).id,
        replicas=p.replicas,
        gpus_per_replica=p.replica.gpus or 1,
        max_inflight=int(p.replica_concurrency or SERVE_SLOTS),
        capacity_qps=float(p.replica.capacity_qps),
        target_qps=float(wl.target_qps),
        headroom=float(wl.headroom),
        ttft_slo_s=float(wl.ttft_slo_s),
        tpot_slo_s=float(wl.tpot_slo_s),
        context_tokens=wl.prompt_tokens + wl.output_tokens,
        cpu_ram_gib=float(p.memory.get("cpu_ram_gib") or 0.0),
        settings=p.engine_settings,
        checkpoint=checkpoint(model_id, quant),
    )


def scaled(plan: PlanFile | Mapping[str, Any], replicas: int) -> dict[str, Any]:
    """The plan with `replicas` replicas (a demo on one host), capacity and GPUs to match."""
    if replicas < 1:
        raise RenderError(f"replicas must be >= 1, got {replicas}", field="fleet.replicas")
    p = planfile.of(plan)
    fleet = {**p.data["fleet"], "replicas": replicas, "gpus": replicas * (p.replica.gpus or 1)}
    return {**p.data, "fleet": fleet}
