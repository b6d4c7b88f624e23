"""The send timeout of streamed writes, as nginx's send_timeout: a client that reads nothing for
that long is cut, so it cannot hold a slot for good.

One watchdog per gateway, not a timer per write: a write registers itself (a clock read and a
dict entry), and every quarter of the timeout the watchdog aborts the connections whose write has
been pending longer than the timeout. The pending write then fails (aiohttp cancels the handler of
a lost connection, or the write raises, which the writer learns was the timeout). A timer armed
and cancelled around every token cost about 5 us a token."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

CHECKS_PER_TIMEOUT = 4
MAX_CHECK_S = 1.0


class SendWatch:
    def __init__(self, timeout_s: Callable[[], float], *, on_cut: Callable[[], None]) -> None:
        self.timeout_s = timeout_s  # read at every check: a reload may change it
        self.on_cut = on_cut  # counts the cut (the writer may only see its task cancelled)
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, tuple[float, web.Request]] = {}
        self._cut: set[int] = set()

    async def write(
        self, request: web.Request, resp: web.StreamResponse, data: bytes | None
    ) -> None:
        """Write `data` (None: end the stream); TimeoutError when the watchdog cut it."""
        key = id(resp)
        self._pending[key] = (self._loop.time(), request)
        try:
            if data is None:
                await resp.write_eof()
            else:
                await resp.write(data)
        except ConnectionError:
            if key in self._cut:
                raise TimeoutError("the client read nothing for the send timeout") from None
            raise
        finally:
            del self._pending[key]
            self._cut.discard(key)

    def check(self) -> int:
        """Cut every write pending past the timeout; how many were cut."""
        now, limit, cut = self._loop.time(), self.timeout_s(), 0
        for key, (since, request) in list(self._pending.items()):
            if now - since >= limit and key not in self._cut:
                self._cut.add(key)
                self.on_cut()
                cut += 1
                if request.transport is not None:
                    request.transport.abort()
        return cut

    async def run(self) -> None:
        while True:
            await asyncio.sleep(min(MAX_CHECK_S, self.timeout_s() / CHECKS_PER_TIMEOUT))
            self.check()
