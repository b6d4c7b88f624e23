"""Per-key limits as token buckets, in this process's memory.

A bucket holds up to its burst and refills continuously at the per-minute rate. A request takes one
request token; tokens are taken when the answer ends (prompt + completion), so a long answer may
leave the tokens bucket in debt and the key waits until it refills above zero. `redis_store.py`
runs the same arithmetic in Lua, so one gateway and several behave alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.server.config import KeyLimits

CONCURRENT_RETRY_S = 1.0  # when a slot frees is unknown; a second is a fair guess for LLM calls


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What a store decided for one request, with what the rate-limit headers report."""

    denied: str | None  # "requests", "tokens" or "concurrent"; None: admitted
    retry_after_s: float = 0.0
    requests_left: float | None = None  # None: no such limit
    requests_reset_s: float = 0.0  # until the bucket is full again
    tokens_left: float | None = None
    tokens_reset_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Rate:
    per_s: float
    burst: float


def rates(limits: KeyLimits) -> tuple[Rate | None, Rate | None]:
    """(requests, tokens) buckets for `limits`; None where there is no limit."""
    req = tok = None
    if limits.requests_per_minute:
        rpm = limits.requests_per_minute
        req = Rate(rpm / 60, limits.burst_requests or rpm)
    if limits.tokens_per_minute:
        tpm = limits.tokens_per_minute
        tok = Rate(tpm / 60, limits.burst_tokens or tpm)
    return req, tok


def refill(level: float, since_s: float, rate: Rate) -> float:
    return min(rate.burst, level + since_s * rate.per_s)


def decide(
    req: float | None, tok: float | None, running: int, limits: KeyLimits
) -> tuple[str | None, float]:
    """(denied limit or None, seconds to wait) from the buckets' current levels."""
    r, t = rates(limits)
    if r is not None and req is not None and req < 1:
        return "requests", (1 - req) / r.per_s
    if t is not None and tok is not None and tok <= 0:
        return "tokens", -tok / t.per_s + 1e-3
    if limits.max_concurrent and running >= limits.max_concurrent:
        return "concurrent", CONCURRENT_RETRY_S
    return None, 0.0


class LocalStore:
    """Buckets and running requests per key name, in memory (one gateway process)."""

    name = "local"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._levels: dict[tuple[str, str], tuple[float, float]] = {}  # (key, kind) -> (lvl, t)
        self._running: dict[str, set[str]] = {}

    async def admit(self, key: str, limits: KeyLimits, member: str) -> Verdict:
        now = self._clock()
        r, t = rates(limits)
        req = self._level(key, "requests", r, now)
        tok = self._level(key, "tokens", t, now)
        running = self._running.setdefault(key, set())
        denied, wait = decide(req, tok, len(running), limits)
        if denied is None:
            if r is not None and req is not None:
                req -= 1
                self._levels[key, "requests"] = (req, now)
            if limits.max_concurrent:
                running.add(member)
        return verdict(denied, wait, req, r, tok, t)

    async def settle(self, key: str, limits: KeyLimits, tokens: int, member: str) -> None:
        self._running.get(key, set()).discard(member)
        _, t = rates(limits)
        if t is not None and tokens:
            now = self._clock()
            self._levels[key, "tokens"] = (self._level(key, "tokens", t, now) - tokens, now)

    def _level(self, key: str, kind: str, rate: Rate | None, now: float) -> float | None:
        if rate is None:
            return None
        state = self._levels.get((key, kind))
        if state is None:
            return rate.burst
        level, at = state
        return refill(level, now - at, rate)

    async def close(self) -> None:
        pass


def verdict(
    denied: str | None,
    wait: float,
    req: float | None,
    r: Rate | None,
    tok: float | None,
    t: Rate | None,
) -> Verdict:
    """A verdict from the levels after the decision (the Redis store builds its own alike)."""
    return Verdict(
        denied=denied,
        retry_after_s=wait,
        requests_left=None if req is None else max(0, math.floor(req)),
        requests_reset_s=0.0 if req is None or r is None else (r.burst - req) / r.per_s,
        tokens_left=None if tok is None else max(0, math.floor(tok)),
        tokens_reset_s=0.0 if tok is None or t is None else (t.burst - tok) / t.per_s,
    )
