"""A simulated card that is one EP group of a plan's at-scale layout (`cardinal sim --role`):
prefill or decode worker, or an aggregated EP group, timed by the scale model (planner/scale.py)
as the plan sized it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import planfile
from gateway.planfile import PlanFileError
from gateway.planner.catalog import Catalog
from gateway.planner.scale import Group, group
from gateway.planner.scale_fleet import role_shape
from gateway.sim.engine import EngineConfig


@dataclass(frozen=True, kw_only=True)
class GroupSpeed:
    """The engine's Speed for a whole EP group of N DP ranks: the group's batch is spread over
    its ranks, a step yields 1 + accept tokens per sequence (MTP), prompts are computed by all
    ranks at the group's prefill rate for the plan's prompt length."""

    group: Group
    accept: float
    prompt_tokens: int

    def decode_step_s(self, *, batch: float, ctx: float) -> float:
        g = self.group
        step = g.step_s(batch=max(batch / g.gpus, 1.0), ctx=ctx, accept=self.accept)
        return step / g.tokens_per_step(self.accept)

    def prefill_s(self, tokens: int) -> float:
        g = self.group
        rate = g.prefill_tokens_per_s(self.prompt_tokens) * g.gpus
        return g.knobs.t_fixed_ms / 1e3 + tokens / rate


@dataclass(frozen=True, kw_only=True)
class RoleCard:
    speed: GroupSpeed
    engine: EngineConfig
    kv_transfer_s_per_token: float
    groups: int  # how many of this role the plan has


def role_card(catalog: Catalog, plan: Mapping[str, Any], role: str) -> RoleCard:
    """The card for `role` (prefill, decode, or ep) of the plan's cheapest at-scale layout."""
    p = planfile.of(plan)
    scale = p.data.get("at_scale") or {}
    layouts = scale.get("layouts") or []
    if not layouts:
        raise PlanFileError(
            "the plan has no at-scale layout (plan it with --layout pd or ep)", field="at_scale"
        )
    lay = layouts[0]
    kind = lay["kind"]
    if (kind == "pd") != (role in ("prefill", "decode")):
        raise PlanFileError(
            f"the plan's layout is {kind}: its cards take --role "
            + ("prefill or decode" if kind == "pd" else "ep"),
            field="at_scale.layouts.kind",
        )
    wl = p.workload
    shape = role_shape(lay, role, prompt_tokens=wl.prompt_tokens)
    g = group(
        catalog, model=catalog.model(p.model), quant=lay["quant"], gpu=lay["gpu"], gpus=shape.gpus
    )
    accept = g.knobs.mtp_accept if lay["mtp"] and role != "prefill" else 0.0
    seqs = lay["batch_per_gpu"] * g.gpus
    kv_tokens = int(g.kv_budget_bytes // g.kv_bytes_per_token) * g.gpus
    prefill_tokens = g.knobs.prefill_tokens_per_gpu * g.gpus
    engine = EngineConfig(
        kv_tokens=kv_tokens,
        max_num_seqs=shape.in_flight,
        max_num_batched_tokens=max(prefill_tokens, seqs),
        max_model_len=g.model.max_context,
    )
    return RoleCard(
        speed=GroupSpeed(group=g, accept=accept, prompt_tokens=wl.prompt_tokens),
        engine=engine,
        kv_transfer_s_per_token=g.kv_transfer_s(1),
        groups=shape.groups,
    )
