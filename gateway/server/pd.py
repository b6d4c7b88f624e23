"""Disaggregated requests, in the protocol SGLang's router speaks: a request to a decode worker
goes, with the same body, to a prefill worker too, both told where to meet (the prefill worker's
host and bootstrap port, and a random room in [0, 2^63 - 1]). The decode worker's answer is the
client's; the prefill worker's is read and dropped, and its failures count against it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from gateway.server.backend import Backend
from gateway.server.metrics import GatewayMetrics

if TYPE_CHECKING:
    from gateway.server.admission import Admission
    from gateway.server.policy import RouteRequest

ROOM_BITS = 63  # SGLang stores rooms as int64


def bootstrap_body(body: bytes, prefill: Backend, *, room: int) -> bytes:
    """The request body with SGLang's bootstrap fields naming `prefill` and `room`."""
    data = json.loads(body)
    data["bootstrap_host"] = urlsplit(prefill.url).hostname
    data["bootstrap_port"] = prefill.config.bootstrap_port
    data["bootstrap_room"] = room
    return json.dumps(data, separators=(",", ":")).encode()


class PrefillLegs:
    """Sends and settles the prefill side of each disaggregated request."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: GatewayMetrics,
        *,
        strike: Callable[[Backend, BaseException | str], None],
        failed: Callable[[Backend, BaseException], object],
        rng: random.Random | None = None,
    ) -> None:
        self.session = session
        self.metrics = metrics
        self.strike = strike
        self.failed = failed  # the proxy's rule for a call that got no answer
        self.rng = rng or random.Random()

    def room(self) -> int:
        return self.rng.getrandbits(ROOM_BITS)

    @contextlib.asynccontextmanager
    async def paired(
        self,
        admission: Admission,
        route: RouteRequest,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> AsyncIterator[bytes]:
        """The body to send a decode worker: the client's with the bootstrap fields of a prefill
        worker that gets the same body meanwhile (its slot held until the decode side is done)."""
        pair = admission.acquire_prefill(route)
        paired = bootstrap_body(body, pair, room=self.room())
        leg = self.start(pair, url=pair.url + path, body=paired, headers=headers, model=route.model)
        try:
            yield paired
        finally:
            await self.settle(leg)
            admission.release(pair)

    def start(
        self, backend: Backend, *, url: str, body: bytes, headers: Mapping[str, str], model: str
    ) -> asyncio.Task[None]:
        return asyncio.create_task(self._send(backend, url, body, headers, model))

    async def _send(
        self, backend: Backend, url: str, body: bytes, headers: Mapping[str, str], model: str
    ) -> None:
        backend.served += 1
        try:
            async with self.session.post(url, data=body, headers=headers) as up:
                await up.read()
                status = up.status
        except (aiohttp.ClientError, TimeoutError) as e:
            self.failed(backend, e)
            self._count(model, backend, "error")
            return
        if status >= 500:
            self.strike(backend, f"prefill answered {status}")
        else:
            backend.answered()
        self._count(model, backend, str(status))

    def _count(self, model: str, backend: Backend, code: str) -> None:
        m = self.metrics
        m.child(m.requests, model, backend.name, code).inc()

    @staticmethod
    async def settle(leg: asyncio.Task[None]) -> None:
        """Wait for a leg whose decode side is done (its prompt is computed by then); cancel one
        whose decode side failed first."""
        if not leg.done():
            leg.cancel()
        await asyncio.gather(leg, return_exceptions=True)
