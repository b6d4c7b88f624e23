"""Per-key limits shared by the worker processes of one gateway (`cardinal serve --workers N`):
the first process keeps the buckets in its memory and answers the others over a Unix socket, one
small request per decision as with Redis, so N workers enforce one limit, not N.

The socket lives in a private temporary directory; only this gateway's processes reach it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
from aiohttp import web

from gateway.server.bucket import LocalStore, Verdict
from gateway.server.config import KeyLimits

store_key = web.AppKey("store_key", LocalStore)


def store_app(store: LocalStore) -> web.Application:
    """The first process's side: `store`'s decisions for the other workers."""
    app = web.Application()
    app[store_key] = store
    app.router.add_post("/admit", _admit)
    app.router.add_post("/settle", _settle)
    return app


async def _admit(request: web.Request) -> web.Response:
    q = await request.json()
    verdict = await request.app[store_key].admit(q["key"], KeyLimits(**q["limits"]), q["member"])
    return web.json_response(dataclasses.asdict(verdict))


async def _settle(request: web.Request) -> web.Response:
    q = await request.json()
    limits = KeyLimits(**q["limits"])
    await request.app[store_key].settle(q["key"], limits, q["tokens"], q["member"])
    return web.Response(status=204)


class ParentStore:
    """A worker's side: the first process's buckets. Raises ConnectionError (an OSError, as a
    failed Redis call does) when that process does not answer, and the limiter falls back."""

    name = "local"

    def __init__(self, path: str, *, timeout_s: float) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=path),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def admit(self, key: str, limits: KeyLimits, member: str) -> Verdict:
        q = {"key": key, "limits": dataclasses.asdict(limits), "member": member}
        return Verdict(**await self._post("/admit", q))

    async def settle(self, key: str, limits: KeyLimits, tokens: int, member: str) -> None:
        q = {"key": key, "limits": dataclasses.asdict(limits), "tokens": tokens, "member": member}
        await self._post("/settle", q)

    async def close(self) -> None:
        await self._session.close()

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            async with self._session.post("http://gateway" + path, json=body) as r:
                r.raise_for_status()
                return await r.json() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise ConnectionError(f"the gateway's first process did not answer: {e!r}") from e
