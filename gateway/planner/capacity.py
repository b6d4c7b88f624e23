"""Per-replica capacity under SLOs and the fleet that serves a target rate (docs/formulas.md §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.planner.speed import SpeedModel

HOURS_PER_MONTH = 730.0  # 8760 / 12


@dataclass(frozen=True, kw_only=True)
class Workload:
    prompt_tokens: int
    output_tokens: int
    target_qps: float
    ttft_slo_s: float
    tpot_slo_s: float
    headroom: float = 0.2

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def mean_decode_context(self) -> float:
        return self.prompt_tokens + self.output_tokens / 2


# Chat-template tokens a llama-server slot holds beyond the prompt: Llama 3.1's template adds ~25
# (its default system block) + ~5 a message + 4 (the assistant header), Qwen 2.5's ~20 + ~5 a
# message + 3, DeepSeek-R1's ~5 (their tokenizer_config.json templates): 128 covers a dozen turns.
TEMPLATE_TOKENS = 128
SLOT_ALIGN = 256  # llama.cpp pads each slot's context up to a multiple of 256 (llama-context.cpp)


def slot_tokens(context: int) -> int:
    """A llama.cpp slot's context for requests of `context` tokens: room for the chat template,
    padded as llama.cpp pads it. (-c is shared evenly by the -np slots; an explicit -np leaves the
    unified KV cache off: n_ctx_seq = n_ctx / n_seq_max.)"""
    return -(-(context + TEMPLATE_TOKENS) // SLOT_ALIGN) * SLOT_ALIGN


@dataclass(frozen=True, kw_only=True)
class ReplicaCapacity:
    max_batch: int
    batch_limit: str  # kv_memory | tpot_slo | engine_cap | given
    prefill_s: float
    step_s: float  # decode step at max_batch
    tpot_s: float  # time per output token at capacity: the decode step plus the prefills it carries
    capacity_qps: float
    problem: str = ""  # why the SLOs cannot be met at any load; empty when they can


def replica_capacity(
    speed: SpeedModel, wl: Workload, *, kv_tokens: int, cap: int, seq_tokens: int | None = None
) -> ReplicaCapacity:
    """Highest request rate one replica sustains with TPOT within its SLO; `seq_tokens`: the KV
    one request holds (a llama.cpp slot's; default the request's own tokens)."""
    ctx = wl.mean_decode_context
    seq = seq_tokens or wl.context
    limits = {
        "kv_memory": kv_tokens // seq,
        "engine_cap": cap,
        "tpot_slo": _slo_batch(speed, wl, cap),
    }
    batch = min(limits.values())
    reason = min(limits, key=lambda k: limits[k])
    prefill = speed.prefill_s(wl.prompt_tokens)
    problem = ""
    if limits["kv_memory"] < 1:
        problem = f"the KV cache holds {kv_tokens} tokens, less than one {seq}-token sequence"
    elif limits["tpot_slo"] < 1:
        t1 = _loaded_tpot(speed, wl, 1)
        problem = (
            f"TPOT at batch 1 is {t1 * 1e3:.1f} ms (decode step plus prefill share), above the "
            f"{wl.tpot_slo_s * 1e3:.0f} ms SLO"
        )
    elif prefill > wl.ttft_slo_s:
        problem = f"prefill alone takes {prefill:.2f} s, above the {wl.ttft_slo_s:g} s TTFT SLO"
    batch = max(batch, 1)
    step = speed.decode_step_s(batch=batch, ctx=ctx)
    qps = 1.0 / (prefill + wl.output_tokens * step / batch)
    return ReplicaCapacity(
        max_batch=batch,
        batch_limit=reason,
        prefill_s=prefill,
        step_s=step,
        tpot_s=_loaded_tpot(speed, wl, batch),
        capacity_qps=qps,
        problem=problem,
    )


def _slo_batch(speed: SpeedModel, wl: Workload, cap: int) -> int:
    """Largest batch whose loaded TPOT stays within the SLO (it grows with the batch)."""
    lo, hi = 0, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _loaded_tpot(speed, wl, mid) <= wl.tpot_slo_s:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _loaded_tpot(speed: SpeedModel, wl: Workload, batch: int) -> float:
    """TPOT of a replica running `batch` sequences at its capacity rate.

    With chunked prefill (vLLM's default) new prompts are computed inside the decode steps, so
    every running sequence waits for them too: at the capacity rate 1 / (t_p + O t_s / B) the GPU
    spends the share rate x t_p of its time on prefill, and TPOT = t_s / (1 - share)
    = t_s + B t_p / O. The bare step t_s(B) <= SLO (docs/formulas.md §7) would let measured
    TPOT exceed the SLO at exactly the load the plan promises.
    """
    step = speed.decode_step_s(batch=batch, ctx=wl.mean_decode_context)
    return tpot_with_prefill(
        step_s=step,
        prefill_s=speed.prefill_s(wl.prompt_tokens),
        batch=batch,
        output_tokens=wl.output_tokens,
    )


def tpot_with_prefill(
    *, step_s: float, prefill_s: float, batch: float, output_tokens: int
) -> float:
    """TPOT of `batch` sequences whose steps also carry the prompts admitted meanwhile: over one
    request's life each of the others is replaced once, t_s + B t_p / O (see `_loaded_tpot`)."""
    return step_s + batch * prefill_s / output_tokens


@dataclass(frozen=True, kw_only=True)
class Fleet:
    replicas: int
    utilization: float  # offered load / capacity at the target rate
    ttft_s: float  # expected mean TTFT at the target rate
    tpot_s: float  # expected TPOT at the target rate
    limited_by: str  # headroom | ttft_slo


def size_fleet(
    speed: SpeedModel | None, rep: ReplicaCapacity, wl: Workload, *, target_qps: float | None = None
) -> Fleet:
    """Replicas for the target rate: `ceil(target x (1 + headroom) / capacity)`, more if queueing
    would push TTFT past its SLO (M/D/1 wait on the replica's service time)."""
    target = wl.target_qps if target_qps is None else target_qps
    service = 1.0 / rep.capacity_qps
    util = 1.0 / (1.0 + wl.headroom)
    limited_by = "headroom"
    first = rep.prefill_s + (speed.first_token_overhead_s() if speed is not None else 0.0)
    rho_ttft = md1_utilization(wait_s=wl.ttft_slo_s - first, service_s=service)
    # A given capacity (speed None: measured or claimed) is already the rate at which the SLOs
    # hold, queueing included, so only the headroom applies: the seeds' ceil(target / per-card QPS).
    if speed is not None and rho_ttft < util and not rep.problem:
        util, limited_by = max(rho_ttft, 0.05), "ttft_slo"
    replicas = max(1, math.ceil(target / (rep.capacity_qps * util) - 1e-9))
    rho = target / (replicas * rep.capacity_qps)
    ttft = first + md1_wait(rate=target / replicas, service_s=service)
    tpot = _operating_tpot(speed, rep, wl, per_replica_qps=target / replicas, ttft=ttft)
    return Fleet(
        replicas=replicas, utilization=rho, ttft_s=ttft, tpot_s=tpot, limited_by=limited_by
    )


def md1_wait(*, rate: float, service_s: float, max_utilization: float = 1.0) -> float:
    """Mean wait in an M/D/1 queue (Poisson arrivals at `rate`, a fixed `service_s`), infinite at
    utilisation 1; `max_utilization` holds it below that (a closed loop cannot offer more work than
    it is served)."""
    rho = min(rate * service_s, max_utilization)
    return rho / (2 * (1 - rho)) * service_s if rho < 1 else math.inf


def md1_utilization(*, wait_s: float, service_s: float) -> float:
    """The utilisation at which md1_wait is `wait_s` (floor 0.05, where no wait is affordable)."""
    slack = wait_s / service_s
    return 2 * slack / (1 + 2 * slack) if slack > 0 else 0.05


def _operating_tpot(
    speed: SpeedModel | None,
    rep: ReplicaCapacity,
    wl: Workload,
    *,
    per_replica_qps: float,
    ttft: float,
) -> float:
    """TPOT at the offered rate: the decode step at the concurrency Little's law gives, stretched
    by the share of time the replica spends on prefill (see `_loaded_tpot`)."""
    if speed is None:
        return rep.tpot_s
    idle = max(1.0 - per_replica_qps * rep.prefill_s, 1e-3)
    tpot = rep.step_s
    for _ in range(8):  # fixed point: concurrency depends on the TPOT it produces
        busy = per_replica_qps * (min(ttft, 60.0) + wl.output_tokens * tpot)
        step = speed.decode_step_s(
            batch=min(max(busy, 1.0), rep.max_batch), ctx=wl.mean_decode_context
        )
        tpot = step / idle
    return tpot


def rollout(
    speed: SpeedModel | None, rep: ReplicaCapacity, wl: Workload, stages: list[float]
) -> list[tuple[float, int]]:
    """Replicas needed at each stage of a growing target (the seeds' "start with 4, then 6")."""
    return [(q, size_fleet(speed, rep, wl, target_qps=q).replicas) for q in stages]
