"""A continuous-batching engine like vLLM's, timed by the planner's speed model.

Scheduling (vLLM V1 style, FCFS, no preemption):
- each step first serves the running sequences: one token for every decoding sequence, then the
  next prompt chunk of every sequence still in prefill, within `max_num_batched_tokens`;
- then it admits waiting sequences in arrival order while a slot is free (`max_num_seqs`), the
  token budget is not spent and the head's KV reservation fits. The head is never overtaken.

KV rule: a sequence reserves `prompt + max_tokens` tokens of KV at admission. vLLM allocates blocks
as tokens are computed and preempts when it runs out; since the sim always generates exactly
`max_tokens` (it never emits EOS), reserving the whole sequence up front admits the same work
without ever preempting. The `kv_usage` gauge reports the tokens actually held (prompt prefilled
plus tokens generated), as vLLM's block usage does.

Step time: `decode_step_s(batch=decoding sequences, ctx=their mean context)` plus, for every prompt
chunk, the marginal prefill cost `prefill_s(done + chunk) - prefill_s(done)`. Over a whole prompt
the chunks add up to `prefill_s(prompt) - prefill_s(0)`; a step with no decoding adds the fixed
cost `prefill_s(0)` once, so a lone short prompt takes exactly `prefill_s(prompt)`. A mixed step
pays the weight read in both terms, which errs on the slow side.

Timing: steps follow an absolute timeline (`deadline += step_s`), so late wake-ups of the event
loop do not accumulate; every token carries the timeline time of the step that produced it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MAX_LAG_S = 0.25  # behind the timeline by more than this (a stalled loop): restart from now


class Speed(Protocol):
    """The two figures of the planner's SpeedModel the engine needs."""

    def decode_step_s(self, *, batch: float, ctx: float) -> float: ...

    def prefill_s(self, tokens: int) -> float: ...


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


class LoopClock:
    """The running event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()))


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    kv_tokens: int  # KV cache capacity of the replica, in tokens
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None  # prompt + max_tokens limit; None: kv_tokens

    def __post_init__(self) -> None:
        for name in ("kv_tokens", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("`max_num_batched_tokens` must be >= `max_num_seqs`")

    @property
    def context_limit(self) -> int:
        return min(self.kv_tokens, self.max_model_len or self.kv_tokens)


class SequenceTooLong(ValueError):
    """prompt + max_tokens exceeds what one sequence may hold."""


class Sequence:
    """One request in the engine; `async for t in seq` yields each token's timeline time, and
    `await seq.tokens(start, n)` waits for several at once (one wake-up per SSE event, not per
    token: what lets one process host many cards)."""

    def __init__(self, *, id: int, prompt_tokens: int, max_tokens: int, arrival_s: float) -> None:
        self.id = id
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.arrival_s = arrival_s
        self.prefilled = 0
        self.state = "waiting"  # waiting | running | finished | aborted
        self._times: list[float] = []
        self._waiter: asyncio.Future[None] | None = None
        self._want = 0  # wake the waiter once this many tokens exist
        self._read = 0  # tokens handed out by `async for`

    @property
    def generated(self) -> int:
        return len(self._times)

    @property
    def reserved(self) -> int:
        return self.prompt_tokens + self.max_tokens

    @property
    def context(self) -> int:
        return self.prefilled + self.generated

    @property
    def decoding(self) -> bool:
        return self.prefilled == self.prompt_tokens

    @property
    def done(self) -> bool:
        return self.state in ("finished", "aborted")

    def _emit(self, t: float) -> None:
        self._times.append(t)
        if len(self._times) >= self._want:
            self._wake()

    def _end(self, state: str) -> None:
        self.state = state
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def tokens(self, start: int, n: int) -> list[float]:
        """Times of tokens `start .. start + n - 1`; fewer (maybe none) if the sequence ends."""
        while len(self._times) < start + n and not self.done:
            self._want = start + n
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._times[start : start + n]

    def __aiter__(self) -> Sequence:
        return self

    async def __anext__(self) -> float:
        times = await self.tokens(self._read, 1)
        if not times:
            raise StopAsyncIteration
        self._read += 1
        return times[0]


@dataclass(frozen=True)
class Batch:
    """What one step computes."""

    decode: tuple[Sequence, ...]
    prefill: tuple[tuple[Sequence, int], ...]  # (sequence, prompt tokens this step)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


class Engine:
    """Continuous batching over `Sequence`s; `run()` is the step loop."""

    sequence_type: type[Sequence] = Sequence  # what `submit` queues (whatif keeps counts only)

    def __init__(
        self,
        *,
        config: EngineConfig,
        speed: Speed,
        clock: Clock | None = None,
        slowdown: Callable[[], float] = lambda: 1.0,
    ) -> None:
        self.config = config
        self._speed = speed
        self._slowdown = slowdown  # the card's `slowdown` fault, read at every step
        self._clock = clock or LoopClock()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._kv_reserved = 0
        self._ids = itertools.count()
        self._work = asyncio.Event()

    # -- gauges -----------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_usage(self) -> float:
        """Fraction of the KV cache holding computed tokens (0..1)."""
        return sum(s.context for s in self._running) / self.config.kv_tokens

    # -- requests ---------------------------------------------------------------------------

    def submit(self, *, prompt_tokens: int, max_tokens: int, prefilled: bool = False) -> Sequence:
        """Queue a sequence; raises SequenceTooLong when it could never be admitted. A
        `prefilled` one arrives with its prompt's KV computed elsewhere (a decode worker behind
        a prefill worker): it holds its KV and decodes from the step after its admission."""
        if prompt_tokens <= 0 or max_tokens <= 0:
            raise ValueError("prompt_tokens and max_tokens must be > 0")
        limit = self.config.context_limit
        if prompt_tokens + max_tokens > limit:
            raise SequenceTooLong(
                f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds {limit}"
            )
        seq = self.sequence_type(
            id=next(self._ids),
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            arrival_s=self._clock.now(),
        )
        if prefilled:
            seq.prefilled = prompt_tokens
        self._waiting.append(seq)
        self._work.set()
        return seq

    def abort(self, seq: Sequence) -> None:
        """Drop a sequence at once, freeing its slot and KV; no-op once it is done."""
        if seq.state == "waiting":
            self._waiting.remove(seq)
        elif seq.state == "running":
            self._release(seq)
        else:
            return
        seq._end("aborted")

    def abort_all(self) -> None:
        for seq in [*self._running, *self._waiting]:
            self.abort(seq)

    def _release(self, seq: Sequence) -> None:
        self._running.remove(seq)
        self._kv_reserved -= seq.reserved

    # -- one step ---------------------------------------------------------------------------

    def schedule(self) -> Batch:
        """Pick this step's work and admit waiting sequences (mutates the queues)."""
        decode = tuple(s for s in self._running if s.decoding)
        budget = self.config.max_num_batched_tokens - len(decode)
        prefill: list[tuple[Sequence, int]] = []
        for seq in self._running:
            if not seq.decoding and budget > 0:
                chunk = min(seq.prompt_tokens - seq.prefilled, budget)
                prefill.append((seq, chunk))
                budget -= chunk
        while budget > 0 and self._can_admit():
            seq = self._admit()
            if seq.decoding:  # prefilled elsewhere: it decodes from the next step
                continue
            chunk = min(seq.prompt_tokens, budget)
            prefill.append((seq, chunk))
            budget -= chunk
        return Batch(decode=decode, prefill=tuple(prefill))

    def _can_admit(self) -> bool:
        if not self._waiting or len(self._running) >= self.config.max_num_seqs:
            return False
        return self._kv_reserved + self._waiting[0].reserved <= self.config.kv_tokens

    def _admit(self) -> Sequence:
        seq = self._waiting.popleft()
        seq.state = "running"
        self._running.append(seq)
        self._kv_reserved += seq.reserved
        return seq

    def step_s(self, batch: Batch) -> float:
        """Seconds this batch takes (call before `complete`, which advances the sequences)."""
        speed, t = self._speed, 0.0
        if batch.decode:
            ctx = sum(s.context for s in batch.decode) / len(batch.decode)
            t += speed.decode_step_s(batch=len(batch.decode), ctx=ctx)
        for seq, chunk in batch.prefill:
            t += speed.prefill_s(seq.prefilled + chunk) - speed.prefill_s(seq.prefilled)
        if batch.prefill and not batch.decode:
            t += speed.prefill_s(0)
        return t * self._slowdown()

    def complete(self, batch: Batch, t: float) -> None:
        """Apply a finished step at time `t`: advance prefills, emit tokens, retire sequences."""
        for seq, chunk in batch.prefill:
            if seq.state == "running":
                seq.prefilled += chunk
                if seq.decoding:  # the step that ends the prompt samples the first token
                    self._token(seq, t)
        for seq in batch.decode:
            if seq.state == "running":
                self._token(seq, t)

    def _token(self, seq: Sequence, t: float) -> None:
        seq._emit(t)
        if seq.generated >= seq.max_tokens:
            self._release(seq)
            seq._end("finished")

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Step forever; cancel the task to stop."""
        deadline = self._clock.now()
        while True:
            if await self._idle():
                deadline = self._clock.now()
            batch = self.schedule()
            if batch.empty:
                continue
            deadline = max(deadline, self._clock.now() - MAX_LAG_S) + self.step_s(batch)
            await self._clock.sleep_until(deadline)
            self.complete(batch, deadline)

    async def _idle(self) -> bool:
        """Wait for work; True when there was none (the timeline restarts)."""
        if self._running or self._waiting:
            return False
        self._work.clear()
        await self._work.wait()
        return True
