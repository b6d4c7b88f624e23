"""Running the gateway: one process, or N worker processes sharing the port with SO_REUSEPORT.

Each worker is a whole gateway with its own backends' state and metrics; the kernel spreads
connections over them. Prometheus should scrape each worker (or run one worker per container).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import socket

from aiohttp import web

from gateway.server.app import create_app
from gateway.server.config import GatewayConfig


async def start(
    app: web.Application,
    *,
    sock: socket.socket | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    reuse_port: bool = False,
    shutdown_timeout: float = 10.0,
) -> web.AppRunner:
    """Serve `app` on `sock`, or on host:port; the caller cleans the runner up."""
    # handler_cancellation: a client that disconnects cancels its handler, which closes the
    # upstream connection, which frees the engine's slot.
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    site: web.BaseSite
    if sock is not None:
        site = web.SockSite(runner, sock)
    else:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    await site.start()
    return runner


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other workers can bind too (port 0: the kernel picks one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def serve(config: GatewayConfig, *, workers: int = 1) -> None:
    """Serve until SIGINT or SIGTERM; workers beyond the first are child processes."""
    sock = bound_socket(config.host, config.port)
    port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_worker, args=(config, port), name=f"gateway-worker-{i}", daemon=True)
        for i in range(1, workers)
    ]
    for child in children:
        child.start()
    policy = config.routing.policy
    print(
        f"gateway: http://{config.host}:{port} -> {len(config.backends)} backends, "
        f"routing {policy}, {workers} worker{'s' if workers > 1 else ''}",
        flush=True,
    )
    try:
        asyncio.run(_serve_until_signal(config, sock=sock))
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.join(timeout=5)


def _worker(config: GatewayConfig, port: int) -> None:
    asyncio.run(_serve_until_signal(config, port=port))


async def _serve_until_signal(
    config: GatewayConfig, *, sock: socket.socket | None = None, port: int = 0
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(config)
    runner = await start(app, sock=sock, host=config.host, port=port, reuse_port=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
