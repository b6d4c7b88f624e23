"""The simulated card's engine in virtual time, advanced from event to event.

`VirtualEngine` is gateway.sim.engine's `Engine`: the same scheduler (`schedule`), the same step
time (`step_s`) and the same bookkeeping (`complete`). What it adds is a run of decode steps
taken as one: when a step decodes only and no waiting sequence can join, every following step
decodes the same sequences, one token each, until the first of them finishes or something new
arrives. Such a run of k steps is computed at once (its step ends in closed form where the step
time is affine in the context, which the planner's roofline is between its kinks) and cut short
at the first step end at or after an arrival that could join, a fault or a loss; what it
applies is exactly what k single steps apply.

Sequences keep counts and the first and last token's time, not every token's time: an hour of
10,000 QPS has too many tokens to hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gateway.sim.engine import Batch, Engine, EngineConfig, Sequence, Speed

AFFINE_RTOL = 1e-9  # the step time counts as affine in the context within this


class Tally(Sequence):
    """A sequence that keeps its token count (`generated`, a plain attribute here: the engine
    reads it for every sequence of every step) and its first and last token times."""

    generated = 0  # shadows Sequence's property; set per instance

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.generated = 0
        self.first_s = math.nan
        self.last_s = math.nan
        self.request: object = None  # the whatif request riding on it
        self.on_end: Callable[[Tally], None] | None = None

    def _emit(self, t: float) -> None:
        if not self.generated:
            self.first_s = t
        self.generated += 1
        self.last_s = t

    def _end(self, state: str) -> None:
        self.state = state
        if self.on_end is not None:
            self.on_end(self)


class Run:
    """A planned run of `k` decode-only steps from `t0`: step j (1-based) ends at `end(j)`."""

    __slots__ = ("batch", "t0", "k", "stop", "_a", "_s", "_ends")

    def __init__(self, batch: Batch, t0: float, k: int, a: float, s: float, ends: list[float]):
        self.batch, self.t0, self.k = batch, t0, k
        self.stop = k  # the steps `finish` applies (fewer once cut)
        self._a, self._s = a, s  # affine: step j lasts a + s (j - 1)
        self._ends = ends  # otherwise each step's end, computed one by one

    def end(self, j: int) -> float:
        if self._ends:
            return self._ends[j - 1]
        return self.t0 + j * self._a + self._s * j * (j - 1) / 2

    def steps_by(self, t: float) -> int:
        """The first step whose end is at or after `t` (1..k)."""
        if t <= self.t0:
            return 1
        if self._ends:
            lo, hi = 0, self.k - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if self._ends[mid] >= t:
                    hi = mid
                else:
                    lo = mid + 1
            return lo + 1
        a, s, d = self._a, self._s, t - self.t0
        if s > 0:  # s/2 j^2 + (a - s/2) j - d = 0
            b = a - s / 2
            j = math.ceil((-b + math.sqrt(b * b + 2 * s * d)) / s)
        else:
            j = math.ceil(d / a)
        j = min(max(j, 1), self.k)
        while j > 1 and self.end(j - 1) >= t:  # floating point: settle on the exact step
            j -= 1
        while j < self.k and self.end(j) < t:
            j += 1
        return j


class VirtualClock:
    """The fleet's virtual time: `t` is set by the fleet as it takes each event."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, t: float) -> None:
        self.t = max(self.t, t)


class VirtualEngine(Engine):
    """An Engine driven by its fleet (no `run()` loop): `start(t)` plans what follows `t`,
    `finish()` applies it. `submit` is Engine's, queueing Tallies at the clock's time."""

    sequence_type = Tally

    def __init__(
        self, *, config: EngineConfig, speed: Speed, clock: VirtualClock, runs: bool = True
    ) -> None:
        super().__init__(config=config, speed=speed, clock=clock, slowdown=lambda: self.factor)
        self.runs = runs  # False: every step on its own, as Engine.run takes them
        self.factor = 1.0  # the `slowdown` fault: every step takes this many times as long
        self.plan: Run | None = None  # the step or run of steps under way (None: idle)
        self.steps = 0  # steps applied, for the simulator's speed figures
        self.starts = 0  # steps or runs of steps planned: the engine's wake-ups

    def joins(self) -> bool:
        """Whether a waiting sequence would join the next step (a run under way must stop)."""
        return self._can_admit()

    def start(self, t: float) -> float | None:
        """Plan the work that starts at `t`: the time it ends, or None when there is none."""
        batch = self.schedule()
        if batch.empty:
            self.plan = None
            return None
        self.starts += 1
        if not self.runs or batch.prefill or not batch.decode or self._can_admit():
            self.plan = Run(batch, t, 1, self.step_s(batch), 0.0, [])
            return self.plan.end(1)
        k = min([s.max_tokens - s.generated for s in batch.decode])
        self.plan = self._run(batch, t, k)
        return self.plan.end(k)

    def _run(self, batch: Batch, t: float, k: int) -> Run:
        n = len(batch.decode)
        ctx = sum([s.prefilled + s.generated for s in batch.decode]) / n  # their mean context
        factor = self.factor

        def step(j: int) -> float:
            return self._speed.decode_step_s(batch=n, ctx=ctx + j - 1) * factor

        a = step(1)
        if k == 1:
            return Run(batch, t, 1, a, 0.0, [])
        last = step(k)
        s = (last - a) / (k - 1)
        affine = all(
            abs(step(j) - (a + s * (j - 1))) <= AFFINE_RTOL * a
            for j in {1 + (k - 1) // 4, 1 + (k - 1) // 2, 1 + 3 * (k - 1) // 4}
        )
        if affine:
            return Run(batch, t, k, a, s, [])
        ends, at = [], t
        for j in range(1, k + 1):
            at += step(j)
            ends.append(at)
        return Run(batch, t, k, a, 0.0, ends)

    def cut(self, t: float) -> float | None:
        """End the run under way at the first step end at or after `t` (something arrived or
        changed then): that step's end, or None when the run ends no later anyway."""
        run = self.plan
        assert run is not None
        j = run.steps_by(t)
        if j >= run.stop:
            return None
        run.stop = j
        return run.end(j)

    def finish(self) -> float:
        """Apply the planned work (to where it was cut); returns the time it ends."""
        run = self.plan
        assert run is not None
        j = run.stop
        end = run.end(j)
        self.plan = None
        self.steps += j
        batch = run.batch
        if run.k == 1:  # one step, whatever it holds: the engine's own bookkeeping
            self.complete(batch, end)
            return end
        for seq in batch.decode:
            if seq.state != "running":
                continue
            seq.generated += j  # Tally._advance, inlined: this loop is the simulator's hottest
            seq.last_s = end
            if seq.generated >= seq.max_tokens:
                self._release(seq)
                seq._end("finished")
        return end

    def drop(self, t: float) -> list[Tally]:
        """The card is lost at `t`: every sequence ends aborted (returned), nothing is under way.
        The steps of a run that ended by `t` count as taken, as they were one by one."""
        run = self.plan
        if run is not None and run.k > 1:
            self.steps += self._done_by(run, t)
        seqs = [*self._running, *self._waiting]
        self.plan = None
        self._running.clear()
        self._waiting.clear()
        self._kv_reserved = 0
        for seq in seqs:
            seq.state = "aborted"
        return seqs  # type: ignore[return-value]

    def kv_used(self, t: float) -> float:
        """The engine's KV usage gauge at `t`: within a run, with the tokens of its steps that
        ended by then (a scrape mid-run sees them, as a real engine's gauge would)."""
        run = self.plan
        if run is None or run.k == 1:
            return self.kv_usage
        return self.kv_usage + self._done_by(run, t) * len(run.batch.decode) / self.config.kv_tokens

    @staticmethod
    def _done_by(run: Run, t: float) -> int:
        """Steps of `run` that ended by `t`."""
        j = run.steps_by(t)
        return j if run.end(j) <= t else j - 1
