"""Admission control: a slot on a backend, or a place in one bounded queue with a deadline, or 429.

A freed slot goes straight to the oldest waiter that can use it, so the queue is FIFO and a new
arrival never overtakes a waiter.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Sequence
from typing import Protocol

from gateway.server.backend import Backend
from gateway.server.config import AdmissionConfig
from gateway.server.errors import ModelNotFound, NoBackend, Overloaded
from gateway.server.metrics import GatewayMetrics
from gateway.server.policy import Policy, RouteRequest


class Handoff(Protocol):
    """Where a freed slot is handed to a waiter: an asyncio future in the server, a callback in
    virtual time (gateway/whatif)."""

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def result(self) -> Backend: ...

    def set_result(self, backend: Backend, /) -> None: ...


class Waiter:
    __slots__ = ("route", "exclude", "future")

    def __init__(
        self, route: RouteRequest, exclude: Collection[Backend], future: Handoff | None = None
    ) -> None:
        self.route = route
        self.exclude = exclude
        self.future: Handoff = future or asyncio.get_running_loop().create_future()

    def can_use(self, b: Backend) -> bool:
        return b.up and b.serves(self.route.model) and b not in self.exclude


class Admission:
    def __init__(
        self,
        backends: Sequence[Backend],
        policy: Policy,
        config: AdmissionConfig,
        metrics: GatewayMetrics,
    ) -> None:
        self.backends = backends
        self.policy = policy
        self.config = config
        self.metrics = metrics
        self.queue: deque[Waiter] = deque()
        self._by_model: dict[str, list[Backend]] = {}
        self.rebuild()

    def reconfigure(self, config: AdmissionConfig, policy: Policy) -> None:
        """A reload's settings and policy, over `backends` as it changed them in place."""
        self.config = config
        self.policy = policy
        self.rebuild()

    def rebuild(self) -> None:
        """Index the backends by model again: those that answer requests (whole engines and
        decode workers), and the prefill workers a decode worker is paired with."""
        by_model: dict[str, list[Backend]] = {}
        prefill: dict[str, list[Backend]] = {}
        for b in self.backends:
            for m in b.config.models:
                (prefill if b.config.role == "prefill" else by_model).setdefault(m, []).append(b)
        self._by_model, self._prefill = by_model, prefill

    def acquire_prefill(self, route: RouteRequest, *, exclude: Collection[Backend] = ()) -> Backend:
        """A prefill worker for a disaggregated request, its slot taken: the least outstanding
        one that is up and has a free slot (prefill is short, so it does not queue)."""
        up = [b for b in self._prefill.get(route.model, ()) if b.up and b not in exclude]
        free = [b for b in up if b.inflight < b.max_inflight]
        if not free:
            self._reject("no_prefill")
            if up:
                raise Overloaded(
                    f"every prefill worker for `{route.model}` is busy",
                    retry_after_s=self.config.retry_after_s,
                )
            raise NoBackend(f"no healthy prefill worker serves `{route.model}` right now")
        b = min(free, key=lambda b: (b.inflight / b.max_inflight, b.inflight))
        b.inflight += 1
        return b

    def models(self) -> list[str]:
        return sorted(self._by_model)

    async def acquire(
        self, route: RouteRequest, *, exclude: Collection[Backend] = ()
    ) -> tuple[Backend, float]:
        """A backend with a slot taken for this request, and the seconds spent waiting."""
        b = self.try_acquire(route, exclude=exclude)
        if b is not None:
            return b, 0.0
        return await self._wait(route, exclude)

    def try_acquire(
        self, route: RouteRequest, *, exclude: Collection[Backend] = ()
    ) -> Backend | None:
        """A backend with a slot taken now, or None when every one that could serve is full
        (then the request may `enqueue`). Raises when none could serve."""
        serving = self._by_model.get(route.model)
        if serving is None:
            raise ModelNotFound(f"The model `{route.model}` does not exist.", param="model")
        up = [b for b in serving if b.up and b not in exclude]
        if not up:
            self._reject("no_backend")
            raise NoBackend(f"no healthy backend serves `{route.model}` right now")
        free = [b for b in up if b.inflight < b.max_inflight]
        if not free:
            return None
        b = self.policy.choose(free, route)
        b.inflight += 1
        return b

    def enqueue(self, waiter: Waiter) -> None:
        """Queue a waiter for the next slot it can use, or refuse it when the queue is full."""
        if len(self.queue) >= self.config.queue_size:
            self._reject("queue_full")
            raise Overloaded(
                f"all backends for `{waiter.route.model}` are busy and the queue is full "
                f"({self.config.queue_size} waiting)",
                retry_after_s=self.config.retry_after_s,
            )
        self.queue.append(waiter)

    def timed_out(self, waiter: Waiter) -> Overloaded:
        """A waiter's queue timeout passed: out of the queue, and the error it gets."""
        self.give_up(waiter)
        self._reject("queue_timeout")
        return Overloaded(
            f"no slot for `{waiter.route.model}` within {self.config.queue_timeout_s:g} s",
            retry_after_s=self.config.retry_after_s,
        )

    async def _wait(
        self, route: RouteRequest, exclude: Collection[Backend]
    ) -> tuple[Backend, float]:
        waiter = Waiter(route, exclude)
        self.enqueue(waiter)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            async with asyncio.timeout(self.config.queue_timeout_s):
                backend = await waiter.future
        except TimeoutError:
            raise self.timed_out(waiter) from None
        except BaseException:
            self.give_up(waiter)  # the client went away while waiting
            raise
        return backend, loop.time() - t0

    def release(self, b: Backend) -> None:
        """Free `b`'s slot, or hand it to the oldest waiter that can use it."""
        b.inflight -= 1
        self.wake(b)

    def wake(self, b: Backend) -> None:
        """Give `b`'s free slots to waiters (after a release, or when `b` is re-admitted)."""
        if not self.queue or b.config.role == "prefill":
            return
        for waiter in list(self.queue):
            if b.inflight >= b.max_inflight:
                return
            if waiter.can_use(b) and not waiter.future.done():
                self.queue.remove(waiter)
                b.inflight += 1
                waiter.future.set_result(b)

    def give_up(self, waiter: Waiter) -> None:
        # A slot handed over in the same tick as the timeout or cancel must not leak.
        fut = waiter.future
        if fut.done() and not fut.cancelled():
            self.release(fut.result())
        elif waiter in self.queue:
            self.queue.remove(waiter)

    def _reject(self, reason: str) -> None:
        self.metrics.child(self.metrics.rejected, reason).inc()
