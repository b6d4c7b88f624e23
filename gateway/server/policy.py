"""Routing policies behind one pure interface: `choose(candidates, request) -> backend`.

Candidates are the backends that are up, serve the request's model and have a free slot (never
empty). Policies do no I/O and never await; their only inputs are the backends' live counters, the
engine load last scraped, and an injected random source.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.server.backend import Backend
from gateway.server.config import RoutingConfig


@dataclass(frozen=True, slots=True)
class RouteRequest:
    model: str
    key: str | None = None  # affinity key (session header, `user`, or prompt prefix)


class Policy(Protocol):
    needs_key: bool  # whether the app should compute `RouteRequest.key`

    def choose(self, candidates: Sequence[Backend], request: RouteRequest) -> Backend: ...


class RoundRobin:
    """Each backend in turn, in config order, skipping those not among the candidates."""

    needs_key = False

    def __init__(self, size: int) -> None:
        self._size = size  # backends in the config
        self._next = 0

    def choose(self, candidates: Sequence[Backend], request: RouteRequest) -> Backend:
        # Turns follow the config index, so a full or ejected backend loses only its own turn.
        best = min(candidates, key=lambda b: (b.index - self._next) % self._size)
        self._next = best.index + 1
        return best


class LeastOutstanding:
    """Power of two choices on in-flight requests per unit of capacity weight.

    The two are sampled in proportion to weight and a tie goes to the first sampled, so a card
    with twice the weight takes twice the requests at zero load too, not only once queues form.
    """

    needs_key = False

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[Backend], request: RouteRequest) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._two(candidates)
        return b if b.inflight / b.weight < a.inflight / a.weight else a

    def _two(self, candidates: Sequence[Backend]) -> tuple[Backend, Backend]:
        if len(candidates) == 2:
            x, y = candidates
            return (x, y) if self._rng.random() * (x.weight + y.weight) < x.weight else (y, x)
        weights = [c.weight for c in candidates]
        a = self._rng.choices(candidates, weights)[0]
        b = a
        while b is a:
            b = self._rng.choices(candidates, weights)[0]
        return a, b


class EngineAware:
    """The backend whose engine is least loaded: queued requests first, then KV-cache use, then
    the gateway's own in-flight count (fresh between scrapes) as a fraction of the slots: the
    engine's batch cap once a scrape has shown it (the requests running beside a queue), else
    the backend's `max_inflight`. A card of 4 slots in a fleet configured for 32 would
    otherwise look nearly empty at 4 in flight, and a few points of KV usage less than its
    neighbours would send it a queue.

    A waiting request costs a whole slot's worth, since it means the engine's batch is full and
    a new request would queue behind it; KV usage near 1 predicts the same soon. Where the last
    scrape found a queue, the requests sent there since count as queued too: a scrape is up to
    an interval old, and between two of them a slow card would otherwise keep its turn.
    """

    needs_key = False

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[Backend], request: RouteRequest) -> Backend:
        start = self._rng.randrange(len(candidates))  # ties go to a random backend, not the first
        order = [*candidates[start:], *candidates[:start]]
        return min(order, key=_engine_score)


def _engine_score(b: Backend) -> float:
    load = b.load
    waiting = load.waiting or 0.0
    if waiting > 0:  # a queue at the scrape: what was sent since joined it (a scrape is stale)
        waiting += max(0, b.inflight - b.inflight_at_scrape)
    kv = load.kv_usage or 0.0
    slots = min(b.max_inflight, load.slots) if load.slots else b.max_inflight
    return (waiting + kv + (b.inflight + 1) / slots) / b.weight


class Affinity:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018).

    The same key (a session, a user, a shared prompt prefix) goes to the same backend, so its
    prefix cache is reused, unless that backend already carries more than `load_factor` times its
    share of the in-flight requests; then the walk continues clockwise. The ring holds every
    configured backend, so one leaving or filling up moves only its own keys.
    """

    needs_key = True
    VNODES = 64  # ring points per unit of weight

    def __init__(self, backends: Sequence[Backend], *, load_factor: float, rng: random.Random):
        self._backends = list(backends)
        self._load_factor = load_factor
        self._fallback = LeastOutstanding(rng)
        points = [
            (_hash(f"{b.name}#{i}"), b)
            for b in backends
            for i in range(max(1, round(self.VNODES * b.weight)))
        ]
        points.sort(key=lambda p: p[0])
        self._hashes = [h for h, _ in points]
        self._owners = [b for _, b in points]

    def choose(self, candidates: Sequence[Backend], request: RouteRequest) -> Backend:
        if request.key is None:
            return self._fallback.choose(candidates, request)
        serving = [b for b in self._backends if b.up and b.serves(request.model)]
        total = sum(b.inflight for b in serving) + 1
        total_weight = sum(b.weight for b in serving) or 1.0
        start = bisect.bisect(self._hashes, _hash(request.key))
        n = len(self._owners)
        for i in range(n):
            b = self._owners[(start + i) % n]
            bound = math.ceil(self._load_factor * total * b.weight / total_weight)
            if b in candidates and b.inflight + 1 <= bound:
                return b
        return self._fallback.choose(candidates, request)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def make_policy(
    config: RoutingConfig, backends: Sequence[Backend], *, rng: random.Random
) -> Policy:
    if config.policy == "round_robin":
        return RoundRobin(len(backends))
    if config.policy == "engine_aware":
        return EngineAware(rng)
    if config.policy == "affinity":
        return Affinity(backends, load_factor=config.load_factor, rng=rng)
    return LeastOutstanding(rng)
