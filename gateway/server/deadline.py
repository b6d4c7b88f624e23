"""Requests' deadlines (`timeouts.first_byte_s`, `total_s`), kept by one watchdog per gateway.

A deadline is a callback filed in a slot of a coarse timing wheel (TICK_S wide); every tick the
watchdog runs the callbacks of the slots that have passed. Filing one and taking it back are a
dict entry each: an `asyncio.timeout` and a timer around every request cost about 9 us, some 7 %
of the whole request's CPU in the gateway. A deadline fires between its time and two ticks
after it: deadlines are seconds to minutes long.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

TICK_S = 0.05

Filed = tuple[int, int]  # (slot, ticket): what `cancel` needs


class DeadlineWatch:
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots: dict[int, dict[int, Callable[[], None]]] = {}
        self._next = self._slot(self._loop.time())  # the first slot not yet run
        self._tickets = itertools.count()

    @staticmethod
    def _slot(when: float) -> int:
        return int(when / TICK_S) + 1  # its start is past `when`: never early

    def at(self, when: float, fire: Callable[[], None]) -> Filed:
        """Call `fire()` once the loop's clock has passed `when`, unless cancelled first."""
        slot, ticket = max(self._slot(when), self._next), next(self._tickets)
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = {}
        bucket[ticket] = fire
        return slot, ticket

    def cancel(self, filed: Filed) -> None:
        bucket = self._slots.get(filed[0])
        if bucket is not None:
            bucket.pop(filed[1], None)

    def fire_due(self) -> int:
        """Run every callback whose slot has passed; how many ran."""
        now, fired = self._slot(self._loop.time()) - 1, 0
        while self._next <= now:
            bucket = self._slots.pop(self._next, None)
            self._next += 1
            for fire in (bucket or {}).values():
                fire()
                fired += 1
        return fired

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.fire_due()
