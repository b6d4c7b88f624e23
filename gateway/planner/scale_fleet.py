"""Fleets of EP groups at the SLOs (scale.py times one group): aggregated EP/DP groups that
prefill and decode, or prefill and decode groups apart (PD), with and without MTP; each layout
that fails says why."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.planner.capacity import HOURS_PER_MONTH, Workload, md1_utilization, md1_wait
from gateway.planner.catalog import Catalog, Model
from gateway.planner.scale import Group, group, load_knobs


@dataclass(frozen=True, kw_only=True)
class Decode:
    batch: int  # sequences per GPU
    limited_by: str  # kv_memory | tpot_slo | engine_cap
    step_s: float
    tpot_s: float
    tokens_per_s_per_gpu: float


def decode_at_slo(g: Group, wl: Workload, *, accept: float, mixed: bool = False) -> Decode | str:
    """The largest per-GPU batch whose TPOT meets the SLO and whose cache fits; `mixed`
    (aggregated serving): the steps also prefill the prompts of the requests that replace the
    finished ones (Group.mixed_step_s)."""
    ctx = wl.mean_decode_context
    limits = {
        "kv_memory": int(g.kv_budget_bytes // (wl.context * g.kv_bytes_per_token)),
        "engine_cap": g.knobs.max_running_per_gpu,
    }
    cap = min(limits.values())
    if cap < 1:
        return f"the KV cache holds less than one {wl.context}-token sequence per GPU"

    def step(b: int) -> float:
        if mixed:
            return g.mixed_step_s(
                batch=b, ctx=ctx, accept=accept, isl=wl.prompt_tokens, osl=wl.output_tokens
            )
        return g.step_s(batch=b, ctx=ctx, accept=accept)

    def tpot(b: int) -> float:
        return step(b) / g.tokens_per_step(accept)

    if tpot(1) > wl.tpot_slo_s:
        return (
            f"TPOT {tpot(1) * 1e3:.1f} ms at one sequence per GPU exceeds the "
            f"{wl.tpot_slo_s * 1e3:g} ms SLO"
        )
    lo, hi = 1, cap
    while lo < hi:  # TPOT grows with the batch
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if tpot(mid) <= wl.tpot_slo_s else (lo, mid - 1)
    limited = "tpot_slo" if lo < cap else min(limits, key=lambda n: limits[n])
    t = step(lo)
    return Decode(
        batch=lo,
        limited_by=limited,
        step_s=t,
        tpot_s=tpot(lo),
        tokens_per_s_per_gpu=lo * g.tokens_per_step(accept) / t,
    )


@dataclass(frozen=True, kw_only=True)
class ScaleOption:
    """A fleet of EP groups: `kind` ep (each group prefills and decodes) or pd (prefill groups
    and decode groups apart, the cache sent between them)."""

    kind: str
    gpu: str
    quant: str
    mtp: bool
    prefill_gpus: int  # GPUs per prefill group (pd) or per group (ep)
    decode_gpus: int  # GPUs per decode group (pd); = prefill_gpus for ep
    prefill_groups: int
    decode_groups: int
    batch_per_gpu: int
    limited_by: str
    input_tokens_per_s_per_node: float  # a prefill node's rate (ep: a node's while it prefills)
    output_tokens_per_s_per_node: float  # a decode node's rate at the chosen batch
    ttft_s: float
    tpot_s: float
    capacity_qps: float
    price_usd_per_hour: float | None

    @property
    def gpus(self) -> int:
        if self.kind == "ep":
            return self.prefill_groups * self.prefill_gpus
        return self.prefill_groups * self.prefill_gpus + self.decode_groups * self.decode_gpus

    @property
    def monthly_usd(self) -> float | None:
        p = self.price_usd_per_hour
        return None if p is None else self.gpus * p * HOURS_PER_MONTH

    @property
    def layout(self) -> str:
        mtp = " + MTP" if self.mtp else ""
        if self.kind == "ep":
            return f"{self.prefill_groups} x EP{self.prefill_gpus} (DP attention){mtp}"
        return (
            f"PD: {self.prefill_groups} x EP{self.prefill_gpus} prefill + "
            f"{self.decode_groups} x EP{self.decode_gpus} decode{mtp}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "kind": self.kind,
            "gpu": self.gpu,
            "quant": self.quant,
            "mtp": self.mtp,
            "prefill_gpus_per_group": self.prefill_gpus,
            "decode_gpus_per_group": self.decode_gpus,
            "prefill_groups": self.prefill_groups,
            "decode_groups": self.decode_groups,
            "gpus": self.gpus,
            "batch_per_gpu": self.batch_per_gpu,
            "batch_limited_by": self.limited_by,
            "input_tokens_per_s_per_node": round(self.input_tokens_per_s_per_node, 1),
            "output_tokens_per_s_per_node": round(self.output_tokens_per_s_per_node, 1),
            "ttft_s": round(self.ttft_s, 4),
            "tpot_s": round(self.tpot_s, 5),
            "capacity_qps": round(self.capacity_qps, 3),
            "monthly_usd": None if self.monthly_usd is None else round(self.monthly_usd),
        }


def aggregated(
    catalog: Catalog, model: Model, quant: str, gpu: str, wl: Workload, *, nodes: int, accept: float
) -> ScaleOption | str:
    """Groups of `nodes` nodes that prefill (chunked, inside the decode steps) and decode."""
    g = group(catalog, model=model, quant=quant, gpu=gpu, gpus=nodes * load_knobs().gpus_per_node)
    if problem := g.problem():
        return problem
    prefill_s = wl.prompt_tokens / g.prefill_tokens_per_s(wl.prompt_tokens)
    d = decode_at_slo(g, wl, accept=accept, mixed=True)
    if isinstance(d, str):
        return d
    # per GPU: the mixed steps carry the prompts, so the output rate is the request rate
    per_gpu_qps = d.tokens_per_s_per_gpu / wl.output_tokens
    group_qps = per_gpu_qps * g.gpus
    first = prefill_s + d.step_s
    if first >= wl.ttft_slo_s:
        return _ttft_miss(first, wl)
    util = _utilization(wl, first_s=first, service_s=1 / per_gpu_qps)
    groups = max(1, math.ceil(wl.target_qps / (group_qps * util) - 1e-9))
    rate = wl.target_qps / (groups * g.gpus)  # per DP rank
    n = g.knobs.gpus_per_node
    return ScaleOption(
        kind="ep",
        gpu=g.gpu.id,
        quant=quant,
        mtp=accept > 0,
        prefill_gpus=g.gpus,
        decode_gpus=g.gpus,
        prefill_groups=groups,
        decode_groups=0,
        batch_per_gpu=d.batch,
        limited_by=d.limited_by,
        input_tokens_per_s_per_node=g.prefill_tokens_per_s(wl.prompt_tokens) * n,
        output_tokens_per_s_per_node=d.tokens_per_s_per_gpu * n,
        ttft_s=first + md1_wait(rate=rate, service_s=1 / per_gpu_qps),
        tpot_s=d.tpot_s,
        capacity_qps=group_qps * groups,
        price_usd_per_hour=g.gpu.price_usd_per_hour,
    )


def disaggregated(
    catalog: Catalog,
    model: Model,
    quant: str,
    gpu: str,
    wl: Workload,
    *,
    prefill_nodes: int,
    decode_nodes: int,
    accept: float,
) -> ScaleOption | str:
    """Prefill groups sized by prompt tokens/s at the TTFT SLO, decode groups by output tokens/s
    at the TPOT SLO; each prompt's cache crosses the NIC once (it adds to TTFT)."""
    n = load_knobs().gpus_per_node
    p = group(catalog, model=model, quant=quant, gpu=gpu, gpus=prefill_nodes * n)
    d = group(catalog, model=model, quant=quant, gpu=gpu, gpus=decode_nodes * n)
    if problem := p.problem() or d.problem():
        return problem
    dec = decode_at_slo(d, wl, accept=accept)
    if isinstance(dec, str):
        return dec
    per_gpu_in = p.prefill_tokens_per_s(wl.prompt_tokens)
    service = wl.prompt_tokens / per_gpu_in  # one prompt on one prefill DP rank
    first = service + p.kv_transfer_s(wl.prompt_tokens) + dec.step_s
    if first >= wl.ttft_slo_s:
        return _ttft_miss(first, wl)
    util = _utilization(wl, first_s=first, service_s=service)
    target = wl.target_qps
    prefill_groups = max(1, math.ceil(target * service / (p.gpus * util) - 1e-9))
    decode_qps_per_group = dec.tokens_per_s_per_gpu * d.gpus / wl.output_tokens
    decode_groups = max(1, math.ceil(target * (1 + wl.headroom) / decode_qps_per_group - 1e-9))
    rate = target / (prefill_groups * p.gpus)
    capacity = min(prefill_groups * p.gpus / service, decode_groups * decode_qps_per_group)
    return ScaleOption(
        kind="pd",
        gpu=p.gpu.id,
        quant=quant,
        mtp=accept > 0,
        prefill_gpus=p.gpus,
        decode_gpus=d.gpus,
        prefill_groups=prefill_groups,
        decode_groups=decode_groups,
        batch_per_gpu=dec.batch,
        limited_by=dec.limited_by,
        input_tokens_per_s_per_node=per_gpu_in * n,
        output_tokens_per_s_per_node=dec.tokens_per_s_per_gpu * n,
        ttft_s=first + md1_wait(rate=rate, service_s=service),
        tpot_s=dec.tpot_s,
        capacity_qps=capacity,
        price_usd_per_hour=p.gpu.price_usd_per_hour,
    )


@dataclass(frozen=True)
class RoleShape:
    """One role of an at-scale layout as deployed: its groups, their GPUs, and the requests a
    group holds at once (decode and ep: the planned batch; prefill: the prompts of one prefill
    batch)."""

    gpus: int
    groups: int
    in_flight: int


def role_shape(layout: Mapping[str, Any], role: str, *, prompt_tokens: int) -> RoleShape:
    """`role` (prefill, decode or ep) of a layout as the plan file holds it (as_dict)."""
    decode = role == "decode"
    gpus = int(layout["decode_gpus_per_group"] if decode else layout["prefill_gpus_per_group"])
    groups = int(layout["decode_groups"] if decode else layout["prefill_groups"])
    if role == "prefill":
        batch = load_knobs().prefill_tokens_per_gpu * gpus
        return RoleShape(gpus, groups, max(1, batch // prompt_tokens))
    return RoleShape(gpus, groups, int(layout["batch_per_gpu"]) * gpus)


def _ttft_miss(first: float, wl: Workload) -> str:
    return f"TTFT {first:.2f} s on an idle group exceeds the {wl.ttft_slo_s:g} s SLO"


def _utilization(wl: Workload, *, first_s: float, service_s: float) -> float:
    """The load per DP rank at which the M/D/1 prompt queue keeps TTFT within its SLO, and no
    more than the headroom allows."""
    return min(
        1 / (1 + wl.headroom), md1_utilization(wait_s=wl.ttft_slo_s - first_s, service_s=service_s)
    )


def options(
    catalog: Catalog,
    model: Model,
    quant: str,
    gpu: str,
    wl: Workload,
    *,
    mtp: str = "auto",
    accept: float | None = None,
) -> tuple[list[ScaleOption], list[str]]:
    """Every EP and PD layout of scale.yaml's group sizes (`mtp`: off, on, or auto: both where
    the model has an MTP module) that meets the SLOs, fewest GPUs first, and why each other one
    does not."""
    k = load_knobs()
    rates = {"off": [0.0], "on": [accept or k.mtp_accept]}.get(mtp)
    if rates is None:
        rates = [0.0] + ([accept or k.mtp_accept] if model.mtp_layers else [])
    ok: list[ScaleOption] = []
    why: list[str] = []
    for rate in rates:
        tag = f" + MTP ({rate:.0%} accepted)" if rate else ""
        for nodes in k.group_nodes:
            opt = aggregated(catalog, model, quant, gpu, wl, nodes=nodes, accept=rate)
            _keep(opt, ok, why, f"EP{nodes * k.gpus_per_node}{tag}")
        for pn in k.group_nodes:
            for dn in k.group_nodes:
                opt = disaggregated(
                    catalog, model, quant, gpu, wl, prefill_nodes=pn, decode_nodes=dn, accept=rate
                )
                _keep(opt, ok, why, f"PD {pn}+{dn} nodes{tag}")
    ok.sort(key=lambda o: (o.gpus, o.ttft_s))
    return ok, why


def _keep(result: ScaleOption | str, ok: list[ScaleOption], why: list[str], name: str) -> None:
    if isinstance(result, str):
        why.append(f"{name}: {result}")
    else:
        ok.append(result)
