"""A card's faults in action: the gates its handlers pass through, with the card's own seeded
random numbers so a run can be replayed."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from gateway.sim.errors import ApiError, Loading
from gateway.sim.faults import Faults


class InjectedError(ApiError):
    status = 500
    type = "InternalServerError"


class FaultInjector:
    def __init__(self, faults: Faults, *, seed: int) -> None:
        self.faults = faults
        self._rng = random.Random(seed)
        self._loop = asyncio.get_running_loop()
        self.ready_at = self._loop.time() + faults.loading_s
        self._released = asyncio.Event()  # set: hung requests may go on
        if not faults.hang:
            self._released.set()

    def update(self, changes: Mapping[str, Any]) -> Faults:
        """Apply changes; naming `loading_s` starts a new loading period now (a restart)."""
        self.faults = self.faults.update(changes)
        if "loading_s" in changes:
            self.ready_at = self._loop.time() + self.faults.loading_s
        if not self.faults.hang:
            self._released.set()
        else:
            self._released.clear()
        return self.faults

    def clear(self) -> Faults:
        self.faults = Faults()
        self.ready_at = self._loop.time()
        self._released.set()
        return self.faults

    def release(self) -> None:
        """Let hung requests end (the card is shutting down)."""
        self._released.set()

    async def health(self) -> None:
        await self._hang()
        self._loading()

    async def generation(self) -> int | None:
        """Pass a generation request through the faults; returns after how many tokens its
        response is to be cut, or None."""
        await self._hang()
        self._loading()
        f = self.faults
        if f.error_rate and self._rng.random() < f.error_rate:
            raise InjectedError(f"injected fault: error_rate={f.error_rate:g}")
        if f.spike_rate and self._rng.random() < f.spike_rate:
            await asyncio.sleep(f.spike_s)
        if f.crash_after is not None and self._rng.random() < f.crash_rate:
            return f.crash_after
        return None

    async def _hang(self) -> None:
        if self.faults.hang:
            await self._released.wait()

    def _loading(self) -> None:
        if self._loop.time() < self.ready_at:
            raise Loading("Loading model")
