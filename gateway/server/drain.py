"""The client requests in flight, so that a stopping gateway can wait for them and then end the
rest itself: a stream with OpenAI's in-band error event, any other request with a 503, both
within `server.drain_timeout_s` (aiohttp's own shutdown would wait the deadline twice and then
close the sockets with no word to the client)."""

from __future__ import annotations

import asyncio


class InFlight:
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self.cutting = False  # set before the cut: a cancelled request asks this to tell why
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> asyncio.Task[object] | None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
            self._idle.clear()
        return task

    def leave(self, task: asyncio.Task[object] | None) -> None:
        self.tasks.discard(task)  # type: ignore[arg-type]
        if not self.tasks:
            self._idle.set()

    async def finished(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every request to end; True when they did."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cut(self) -> int:
        """End every request still running: each learns from `cutting` that the gateway, not
        its client, cancelled it, and answers accordingly. Returns how many were cut."""
        self.cutting = True
        for task in self.tasks:
            task.cancel()
        return len(self.tasks)

    def cancelled_by_cut(self) -> bool:
        """In a request that caught CancelledError: was it the cut? If so the cancellation is
        consumed (the request goes on to answer its client), else it must propagate."""
        task = asyncio.current_task()
        if not self.cutting or task is None or task not in self.tasks:
            return False
        task.uncancel()
        return True
