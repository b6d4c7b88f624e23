"""The fleet in virtual time: N simulated cards behind the gateway's own admission and routing,
driven by a workload, with scripted events and an autoscaling rule, in one process.

What runs here is the server's code, not a copy of it: `Backend` (health state, in-flight count,
ejection and backoff), `make_policy` (the routing policies), `Admission` (slots, the bounded FIFO
queue, its timeout, the hand-over of a freed slot), `engine_load` (what a scrape makes of an
engine's metrics) and the simulated card's `Engine` (gateway/whatif/engine.py). The gateway's
config is the one `cardinal serve --plan` runs (`serve_data`). What is modelled, not run:
- the network and the gateway's own time (no added latency);
- a lost card resets its connections at once: what it held without a first token is retried on
  another card (as the proxy retries a request whose stream broke before its first event),
  what was streaming ends with an error, and the card is ejected; the prober's backoff
  (`Backend.eject`) decides when it is tried again;
- an added card warms for the cold start (503 to the prober), then joins at the next probe.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.server.admission import Admission, Waiter
from gateway.server.backend import WARMING, Backend
from gateway.server.config import GatewayConfig
from gateway.server.config import parse as parse_gateway_config
from gateway.server.errors import NoBackend, Overloaded
from gateway.server.metrics import GatewayMetrics
from gateway.server.policy import RouteRequest, make_policy
from gateway.server.scrape import engine_load
from gateway.sim.card import Card
from gateway.sim.engine import SequenceTooLong
from gateway.whatif.engine import Tally, VirtualClock, VirtualEngine
from gateway.whatif.events import Autoscale, Event
from gateway.whatif.stats import Stats
from gateway.whatif.workload import Arrival

SAMPLE_S = 5.0  # the fleet's queue, batch and cards are sampled this often

# event kinds, in the order ties are taken at one time
STEP, HANDOFF, ARRIVE, TIMEOUT, PROBE, SCRAPE, SCRIPT, SCALE, SAMPLE = range(9)


@dataclass(eq=False)
class Request:
    id: int
    t: float  # arrival (the client's intended start)
    prompt: int
    output: int
    tried: list[Backend] = field(default_factory=list)
    seq: Tally | None = None
    card: SimCard | None = None


@dataclass(eq=False)
class SimCard:
    index: int
    backend: Backend
    engine: VirtualEngine
    added_s: float
    ready_s: float  # warm from then on
    alive: bool = True
    removed_s: float | None = None
    gen: int = 0  # the pending step event's generation (an older one is stale)
    streams: set[Request] = field(default_factory=set)


class _Handoff:
    """A freed slot handed to a queued request, in the admission queue's own hand-over."""

    __slots__ = ("fleet", "request", "_backend")

    def __init__(self, fleet: Fleet, request: Request) -> None:
        self.fleet, self.request, self._backend = fleet, request, None

    def done(self) -> bool:
        return self._backend is not None

    def cancelled(self) -> bool:
        return False

    def result(self) -> Backend:
        assert self._backend is not None
        return self._backend

    def set_result(self, backend: Backend, /) -> None:
        self._backend = backend
        self.fleet._push(self.fleet.now, HANDOFF, (self.request, backend))


def gateway_config(plan: Any, cards: int, *, policy: str | None = None) -> GatewayConfig:
    """What `cardinal serve --plan` runs over `cards` backends (card-0, card-1, ...)."""
    from gateway.render.gateway_config import serve_data

    urls = [f"http://card-{i}:8000" for i in range(cards)]
    data = serve_data(plan, urls=urls, listen="127.0.0.1:8080")
    if policy:
        data["routing"]["policy"] = policy
    return parse_gateway_config(data, env={})


class Fleet:
    def __init__(
        self,
        *,
        card: Card,
        config: GatewayConfig,
        arrivals: Iterator[Arrival],
        duration_s: float,
        ttft_slo_s: float,
        tpot_slo_s: float,
        gpus_per_card: int = 1,
        events: Sequence[Event] = (),
        autoscale: Autoscale | None = None,
        seed: int = 0,
        records: bool = False,
        runs: bool = True,
    ) -> None:
        self.card = card
        self.runs = runs  # False: the engines step one step at a time (a check of the runs)
        self.config = config
        self.duration_s = duration_s
        self.gpus_per_card = gpus_per_card
        self.clock = VirtualClock()  # every engine's, and the fleet's `now`
        self._heap: list[tuple[float, int, int, Any]] = []
        self._order = itertools.count()
        self._ids = itertools.count()
        self._arrivals = arrivals
        self._rng = random.Random(seed)
        self.metrics = GatewayMetrics(CollectorRegistry())
        self.cards: list[SimCard] = []
        self.backends: list[Backend] = []
        for _ in config.backends:
            self._new_card(ready_s=0.0)
        self.policy = make_policy(config.routing, self.backends, rng=self._rng)
        self.admission = Admission(self.backends, self.policy, config.admission, self.metrics)
        self.route = RouteRequest(model=config.backends[0].models[0])
        self.stats = Stats(ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, records=records)
        self.autoscale = autoscale
        self._low_since: float | None = None
        for e in events:
            self._push(e.at_s, SCRIPT, e)
        if autoscale is not None:
            self._push(autoscale.interval_s, SCALE, None)
        if config.routing.policy == "engine_aware":
            self._push(0.0, SCRAPE, None)
        self._push(0.0, SAMPLE, None)
        self._next_arrival()

    # -- the cards ----------------------------------------------------------------------------

    def _new_card(self, *, ready_s: float) -> SimCard:
        i = len(self.cards)
        bc = replace(self.config.backends[0], name=f"card-{i}", url=f"http://card-{i}:8000")
        b = Backend(bc, index=i)
        engine = VirtualEngine(
            config=self.card.engine, speed=self.card.speed, clock=self.clock, runs=self.runs
        )
        card = SimCard(index=i, backend=b, engine=engine, added_s=self.now, ready_s=ready_s)
        self.cards.append(card)
        self.backends.append(b)
        return card

    @property
    def now(self) -> float:
        return self.clock.t

    def _push(self, t: float, kind: int, obj: Any) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._order), obj))

    # -- the loop -------------------------------------------------------------------------------

    def run(self, *, progress: Callable[[float], None] | None = None) -> Stats:
        """Until `duration_s` of virtual time has passed and what arrived by then has ended."""
        heap, pop, clock = self._heap, heapq.heappop, self.clock
        next_report = 60.0
        while heap:
            t, kind, _, obj = pop(heap)
            late = t >= self.duration_s and kind not in (STEP, HANDOFF, TIMEOUT, ARRIVE)
            if late and (kind in (SCRIPT, SCALE) or not self._busy()):
                continue  # from the end on only what is under way goes on
            clock.t = t
            if kind == STEP:
                card, gen = obj
                if gen == card.gen and card.alive:
                    card.engine.finish()
                    self._start(card)
            elif kind == ARRIVE:
                self._arrive(obj)
                self._next_arrival()
            elif kind == HANDOFF:
                request, backend = obj
                card = self.cards[backend.index]
                if card.alive:
                    self._send(request, card)
                else:  # lost between the hand-over and now
                    self.admission.release(backend)
                    self._route(request)
            elif kind == TIMEOUT:
                request, waiter = obj
                if not waiter.future.done():
                    self.admission.timed_out(waiter)
                    self.stats.rejected(request, t, "queue_timeout")
            elif kind == PROBE:
                self._probe(obj)
            elif kind == SCRAPE:
                self._scrape()
            elif kind == SCRIPT:
                self._script(obj)
            elif kind == SCALE:
                self._scale()
            elif kind == SAMPLE:
                self._sample()
            if progress is not None and t >= next_report:
                progress(t)
                next_report += 60.0
        self._sample(final=True)
        return self.stats

    def _busy(self) -> bool:
        return bool(self.admission.queue) or any(c.streams for c in self.cards)

    def _next_arrival(self) -> None:
        a = next(self._arrivals, None)
        if a is not None and a.t <= self.duration_s:
            self._push(a.t, ARRIVE, a)

    # -- a request through the gateway ----------------------------------------------------------

    def _arrive(self, a: Arrival) -> None:
        request = Request(id=next(self._ids), t=a.t, prompt=a.prompt_tokens, output=a.output_tokens)
        self.stats.arrived(a.t)
        self._route(request)

    def _route(self, request: Request) -> None:
        try:
            b = self.admission.try_acquire(self.route, exclude=request.tried)
        except NoBackend:
            self.stats.rejected(request, self.now, "no_backend")
            return
        if b is not None:
            self._send(request, self.cards[b.index])
            return
        waiter = Waiter(self.route, list(request.tried), _Handoff(self, request))
        try:
            self.admission.enqueue(waiter)
        except Overloaded:
            self.stats.rejected(request, self.now, "queue_full")
            return
        self._push(self.now + self.config.admission.queue_timeout_s, TIMEOUT, (request, waiter))

    def _send(self, request: Request, card: SimCard) -> None:
        request.tried.append(card.backend)
        request.card = card
        card.backend.served += 1
        try:
            seq = card.engine.submit(prompt_tokens=request.prompt, max_tokens=request.output)
        except SequenceTooLong:
            self.admission.release(card.backend)
            self.stats.failed(request, self.now, "too_long")
            return
        assert isinstance(seq, Tally)
        seq.request = request
        seq.on_end = self._ended
        request.seq = seq
        card.streams.add(request)
        self._poke(card)

    def _poke(self, card: SimCard) -> None:
        """Work arrived on `card`: start it if idle, or end a run of decode steps early at the
        step where the new sequence could join."""
        engine = card.engine
        if engine.plan is None:
            self._start(card)
        elif engine.joins():
            self._cut(card)

    def _start(self, card: SimCard) -> None:
        self._step_ends(card, card.engine.start(self.now))

    def _cut(self, card: SimCard) -> None:
        """End `card`'s run of steps at the first step end from now (a single step runs on)."""
        plan = card.engine.plan
        if plan is not None and plan.k > 1:
            self._step_ends(card, card.engine.cut(self.now))

    def _step_ends(self, card: SimCard, end: float | None) -> None:
        """The card's work now ends at `end` (None: as planned before, or idle)."""
        if end is not None:
            card.gen += 1  # the step event pushed before is stale from now
            self._push(end, STEP, (card, card.gen))

    def _ended(self, seq: Tally) -> None:
        """A sequence's last token (Tally.on_end, from inside a step's bookkeeping)."""
        request: Request = seq.request  # type: ignore[assignment]
        card = request.card
        assert card is not None
        card.streams.discard(request)
        card.backend.answered()
        self.stats.completed(request, seq.first_s, seq.last_s, seq.generated)
        self.admission.release(card.backend)

    # -- health, scrapes, faults, scaling -------------------------------------------------------

    def _lose(self, card: SimCard) -> None:
        """The card is gone: its streams break, what had no first token goes elsewhere."""
        card.alive = False
        card.gen += 1
        b, h = card.backend, self.config.health
        b.eject("lost", now=self.now, base_s=h.interval_s, max_s=h.max_backoff_s)
        card.engine.drop(self.now)
        retry = []
        for request in sorted(card.streams, key=lambda r: r.id):
            self.admission.release(b)
            if request.seq is not None and request.seq.generated:
                self.stats.failed(request, self.now, "stream_cut")
            elif len(request.tried) < self.config.max_attempts:
                retry.append(request)
            else:
                self.stats.failed(request, self.now, "attempts")
        card.streams.clear()
        for request in retry:
            request.seq = None
            self._route(request)
        self._push(b.next_probe_s, PROBE, card)

    def _probe(self, card: SimCard) -> None:
        """The prober's answer: up (admitted, its slots to the queue), warming, or dead."""
        b, h = card.backend, self.config.health
        if card.removed_s is not None or b.up:
            return
        if not card.alive:
            b.eject("lost", now=self.now, base_s=h.interval_s, max_s=h.max_backoff_s)
        elif self.now < card.ready_s:
            b.warming("loading", now=self.now, base_s=h.interval_s)
        else:
            b.admit()
            self.admission.wake(b)
            return
        self._push(b.next_probe_s, PROBE, card)

    def _scrape(self) -> None:
        for card in self.cards:
            b = card.backend
            if not b.up:
                continue
            e = card.engine
            series = {"running": float(e.num_running), "waiting": float(e.num_waiting)}
            series["kv"] = e.kv_used(self.now)
            b.load = engine_load(series, previous=b.load, generated_before=None, now=self.now)
            b.inflight_at_scrape = b.inflight
        self._push(self.now + self.config.routing.scrape_interval_s, SCRAPE, None)

    def _script(self, e: Event) -> None:
        alive = [c for c in self.cards if c.alive and c.removed_s is None]
        if e.action == "lose":
            for card in alive[len(alive) - min(e.cards, len(alive)) :]:
                self._lose(card)
        elif e.action == "add":
            self._add(e.cards, cold_start_s=e.cold_start_s)
        elif e.action == "slow":
            for card in alive[: e.cards]:
                card.engine.factor = e.factor
                self._cut(card)

    def _add(self, n: int, *, cold_start_s: float) -> None:
        for _ in range(n):
            card = self._new_card(ready_s=self.now + cold_start_s)
            card.backend.state = WARMING
            self._push(self.now + min(cold_start_s, self.config.health.interval_s), PROBE, card)
        self.policy = make_policy(self.config.routing, self.backends, rng=self._rng)
        self.admission.reconfigure(self.config.admission, self.policy)

    def _scale(self) -> None:
        """The autoscaling rule: the replicas the arrival rate over its window needs at the
        target rate per card (Kubernetes' HPA formula), out at once, in after a steady low."""
        a = self.autoscale
        assert a is not None
        rate = self.stats.rate(self.now, a.window_s)
        present = [
            c for c in self.cards if c.alive and c.removed_s is None and not c.backend.draining
        ]
        desired = min(a.max_cards, max(a.min_cards, math.ceil(rate / a.target_qps_per_card)))
        if desired > len(present):
            self._add(desired - len(present), cold_start_s=a.cold_start_s)
            self._low_since = None
        elif desired < len(present):
            self._low_since = self.now if self._low_since is None else self._low_since
            if self.now - self._low_since >= a.scale_in_delay_s:
                for card in present[desired - len(present) :]:
                    card.backend.draining = True
                self._low_since = None
        else:
            self._low_since = None
        for card in self.cards:  # a drained card leaves once its last stream ends
            if card.backend.draining and card.removed_s is None and not card.streams:
                card.removed_s = self.now
        self._push(self.now + a.interval_s, SCALE, None)

    def _sample(self, *, final: bool = False) -> None:
        present = [c for c in self.cards if c.alive and c.removed_s is None]
        self.stats.sample(
            self.now,
            cards_up=sum(c.backend.up for c in present),
            cards_present=len(present),
            queued=len(self.admission.queue),
            running=sum(c.engine.num_running for c in present),
            waiting=sum(c.engine.num_waiting for c in present),
        )
        if not final:
            self._push(self.now + SAMPLE_S, SAMPLE, None)

    # -- totals ---------------------------------------------------------------------------------

    def gpu_hours(self) -> float:
        end = max(self.now, self.duration_s)
        held = 0.0
        for c in self.cards:
            stop = c.removed_s if c.removed_s is not None else end
            held += max(0.0, stop - c.added_s)
        return held * self.gpus_per_card / 3600

    def steps(self) -> int:
        return sum(c.engine.steps for c in self.cards)
