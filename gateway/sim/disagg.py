"""Prefill and decode roles of a simulated card, in the protocol SGLang's disaggregated serving
uses: the router sends the same request to a prefill worker and a decode worker with a bootstrap
host, port and room. The prefill worker computes the prompt and marks the room ready; the decode
worker fetches the room from the prefill worker's bootstrap server (here the prefill card's own
HTTP port serves it, at GET /bootstrap/rooms/{room}), waits the modelled cache transfer, and
decodes the request as one whose prompt is already in its cache."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp

from gateway.sim.errors import BadRequest, PrefillUnavailable
from gateway.sim.protocol import Bootstrap, GenRequest

ROLES = ("both", "prefill", "decode")
ROOM_TTL_S = 120.0  # a ready room nobody fetched is forgotten after this
FETCH_TIMEOUT_S = 60.0  # how long a decode worker waits for its prefill worker


@dataclass
class Rooms:
    """The prefill side's bootstrap rooms: one event per room, set when its prompt is computed."""

    ttl_s: float = ROOM_TTL_S
    _rooms: dict[int, tuple[asyncio.Event, float]] = field(default_factory=dict)

    def _entry(self, room: int) -> asyncio.Event:
        now = asyncio.get_running_loop().time()
        if room not in self._rooms:
            self._expire(now)
            self._rooms[room] = (asyncio.Event(), now)
        return self._rooms[room][0]

    def ready(self, room: int) -> None:
        self._entry(room).set()

    async def wait(self, room: int, *, timeout_s: float) -> bool:
        """True once the room is ready (within `timeout_s`); the room is then forgotten."""
        event = self._entry(room)
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        self._rooms.pop(room, None)
        return True

    def _expire(self, now: float) -> None:
        for room, (_, born) in list(self._rooms.items()):
            if now - born > self.ttl_s:
                del self._rooms[room]

    def __len__(self) -> int:
        return len(self._rooms)


def require_bootstrap(req: GenRequest, role: str) -> Bootstrap:
    if req.bootstrap is None:
        raise BadRequest(
            f"a {role} worker serves disaggregated requests only: `bootstrap_host`, "
            "`bootstrap_port` and `bootstrap_room` are required",
            param="bootstrap_room",
        )
    return req.bootstrap


async def fetch_room(session: aiohttp.ClientSession, b: Bootstrap, *, default_port: int) -> None:
    """Wait on the prefill worker's bootstrap server until the request's room is ready."""
    host = f"[{b.host}]" if ":" in b.host else b.host
    url = f"http://{host}:{b.port or default_port}/bootstrap/rooms/{b.room}"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as r:
            if r.status != 200:
                raise PrefillUnavailable(
                    f"the prefill worker at {b.host} answered {r.status} for room {b.room}"
                )
    except (aiohttp.ClientError, TimeoutError) as e:
        raise PrefillUnavailable(
            f"the prefill worker at {b.host} is unreachable: {type(e).__name__}"
        ) from None
