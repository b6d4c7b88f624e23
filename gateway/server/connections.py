"""A listening site with a cap on open client connections.

Past the cap a new connection gets one 503 in OpenAI's error shape and is closed before any of its
bytes are read, as nginx's `limit_conn` does, so a flood of idle or slow connections cannot take
the gateway's file descriptors or memory. (Slow clients are cut by the server's timeouts.)
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

from aiohttp import web

from gateway.server.errors import GatewayError


class TooManyConnections(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "too_many_connections"


def _refusal(limit: int) -> bytes:
    body = json.dumps(
        TooManyConnections(f"the gateway has {limit} connections open; retry shortly").body()
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refuse(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self._response = response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._response)
        transport.close()


class CappedSite(web.BaseSite):
    """Like aiohttp's SockSite, with `max_connections` (`on_refuse` is told of each refusal)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        max_connections: int,
        on_refuse: Callable[[], None] = lambda: None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._sock = sock
        self._max = max_connections
        self._on_refuse = on_refuse
        self._refusal = _refusal(max_connections)
        host, port = sock.getsockname()[:2]
        self._name = f"http://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= self._max:
                self._on_refuse()
                return _Refuse(self._refusal)
            return server()

        loop = asyncio.get_running_loop()
        # BaseSite.stop closes `_server`; aiohttp's own sites set it the same way.
        self._server = await loop.create_server(protocol, sock=self._sock, backlog=self._backlog)
