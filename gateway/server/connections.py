"""A listening site with caps on open client connections: all of them, and those of one client
address.

Past the total cap a new connection gets one 503 in OpenAI's error shape and is closed before any
of its bytes are read, as nginx's `limit_conn` does, so a flood of idle or slow connections cannot
take the gateway's file descriptors or memory. (Slow clients are cut by the server's timeouts.)
Past one address's cap the same happens to that address's new connections only, so one client
cannot lock the others out. Health checks and scrapes can have an address of their own
(`metrics.listen`), outside both caps.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.server.errors import GatewayError


class TooManyConnections(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "too_many_connections"


def _refusal(message: str) -> bytes:
    body = json.dumps(TooManyConnections(message).body()).encode()
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
    """Like aiohttp's SockSite, with `max_connections` and `max_per_client` (`on_refuse` is told
    of each refusal, with `total` or `per_client`)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        max_connections: int,
        max_per_client: int,
        on_refuse: Callable[[str], None] = lambda reason: None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._sock = sock
        self._max = max_connections
        self._max_per_client = max_per_client
        self._on_refuse = on_refuse
        self._refusal = _refusal(f"the gateway has {max_connections} connections open; retry")
        self._client_refusal = _refusal(
            f"this address has {max_per_client} connections open to the gateway, its most; "
            "retry once one closes"
        )
        self.open = 0  # connections open, all addresses
        self._per_client: dict[str, int] = {}
        self._client_of: dict[Any, str] = {}  # aiohttp's handler -> its address
        host, port = sock.getsockname()[:2]
        self._name = f"http://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        # aiohttp's server is told of each connection as it opens and closes: counted there
        opened, closed = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            opened(handler, transport)
            self.open += 1
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if isinstance(peer, tuple) else ""
            n = self._per_client.get(client, 0) + 1
            self._per_client[client] = n
            self._client_of[handler] = client
            if n > self._max_per_client:
                self._on_refuse("per_client")
                transport.write(self._client_refusal)
                transport.close()  # its handler is told, and counts it closed

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            closed(handler, exc)
            client = self._client_of.pop(handler, None)
            if client is None:
                return
            self.open -= 1
            n = self._per_client[client] - 1
            if n:
                self._per_client[client] = n
            else:
                del self._per_client[client]

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

        def protocol() -> asyncio.BaseProtocol:
            if self.open >= self._max:
                self._on_refuse("total")
                return _Refuse(self._refusal)
            return server()

        loop = asyncio.get_running_loop()
        # BaseSite.stop closes `_server`; aiohttp's own sites set it the same way.
        self._server = await loop.create_server(protocol, sock=self._sock, backlog=self._backlog)
