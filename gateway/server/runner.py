"""Running the gateway: one process, or N worker processes sharing the port with SO_REUSEPORT.

Each worker is a whole gateway with its own backends' state and metrics; the kernel spreads
connections over them. Prometheus should scrape each worker (or run one worker per container).
Per-key limits are one set for all workers: the first process holds them and answers the others
over a Unix socket (`shared_limits.py`), Redis or not.
SIGHUP reloads the config in every worker; SIGTERM (or SIGINT) stops accepting connections, lets
the requests in flight finish within `server.drain_timeout_s`, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.server.app import create_app, live_key, metrics_key, reloader_key
from gateway.server.bucket import LocalStore
from gateway.server.config import GatewayConfig
from gateway.server.connections import CappedSite
from gateway.server.shared_limits import store_app

log = logging.getLogger("cardinal.gateway")

Loader = Callable[[], GatewayConfig]  # reads gateway.yaml again (the CLI's, for reloads)


async def start(
    app: web.Application,
    *,
    sock: socket.socket | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    reuse_port: bool = False,
    shutdown_timeout: float = 10.0,
) -> web.AppRunner:
    """Serve `app` on `sock`, or on host:port; the caller cleans the runner up.

    A gateway app gets its `server` settings: the connection cap, and the header timeout."""
    server = app[live_key].config.server if live_key in app else None
    kwargs = {} if server is None else {"keepalive_timeout": server.header_timeout_s}
    # handler_cancellation: a client that disconnects cancels its handler, which closes the
    # upstream connection, which frees the engine's slot. keepalive_timeout also bounds how long
    # a connection may take to send a request's head: aiohttp closes one still waiting then.
    runner = web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout,
        **kwargs,
    )
    await runner.setup()
    site: web.BaseSite
    if server is not None:
        metrics = app[metrics_key]
        sock = sock or bound_socket(host, port)
        site = CappedSite(
            runner, sock, max_connections=server.max_connections, on_refuse=metrics.refused.inc
        )
        metrics.connections.set_function(
            lambda: len(runner.server.connections) if runner.server else 0
        )
    elif sock is not None:
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


def serve(config: GatewayConfig, *, workers: int = 1, load: Loader | None = None) -> None:
    """Serve until SIGINT or SIGTERM; workers beyond the first are child processes.

    `load` reads the config again on SIGHUP (None: SIGHUP is ignored)."""
    _logging()
    sock = bound_socket(config.host, config.port)
    port = sock.getsockname()[1]
    # Listening before the workers start, so that their first requests wait for an answer.
    tmp = tempfile.mkdtemp(prefix="cardinal-limits-") if workers > 1 else None
    limits_sock = _unix_socket(str(Path(tmp) / "limits.sock")) if tmp else None
    path = limits_sock.getsockname() if limits_sock else None
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(
            target=_worker,
            args=(config, port, load, path),
            name=f"gateway-worker-{i}",
            daemon=True,
        )
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
    pids = [c.pid for c in children if c.pid is not None]
    try:
        run(
            _serve_until_signal(
                config, sock=sock, load=load, forward_to=pids, limits_sock=limits_sock
            )
        )
    finally:
        for child in children:
            child.terminate()  # a no-op for those already draining on the forwarded signal
        for child in children:
            child.join(timeout=config.server.drain_timeout_s + 5)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _worker(config: GatewayConfig, port: int, load: Loader | None, limits: str | None) -> None:
    _logging()
    run(_serve_until_signal(config, port=port, load=load, parent_limits=limits))


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run the server's coroutine on uvloop where it is installed (a dependency on Linux and
    macOS: its event loop costs less per request and per streamed write), else asyncio's."""
    try:
        import uvloop  # noqa: PLC0415 - optional where it does not build
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _unix_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _serve_until_signal(
    config: GatewayConfig,
    *,
    sock: socket.socket | None = None,
    port: int = 0,
    load: Loader | None = None,
    forward_to: list[int] | None = None,
    limits_sock: socket.socket | None = None,
    parent_limits: str | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    pids = forward_to or []

    def on_stop(sig: signal.Signals) -> None:
        _forward(sig, pids)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop, sig)
    drain_s = config.server.drain_timeout_s
    store = LocalStore()
    app = create_app(config, load_config=load, limits=store, parent_limits=parent_limits)
    shared = await start(store_app(store), sock=limits_sock) if limits_sock else None
    runner = await start(
        app, sock=sock, host=config.host, port=port, reuse_port=True, shutdown_timeout=drain_s
    )
    tasks: set[asyncio.Task[object]] = set()

    def on_hup() -> None:
        _forward(signal.SIGHUP, pids)
        task = asyncio.create_task(app[reloader_key].reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await stop.wait()
        app[live_key].draining = True
        busy = sum(b.inflight for b in app[reloader_key].backends)
        print(f"gateway: draining {busy} requests in flight (up to {drain_s:g} s)", flush=True)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        # Stops listening, closes idle connections, waits for handlers up to the deadline,
        # then cancels the rest (their clients get an error event) and closes the app.
        await runner.cleanup()
        if shared is not None:  # last: the workers settle their requests here as they drain
            await shared.cleanup()
    print("gateway: stopped", flush=True)


def _logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="gateway: %(message)s")
    # aiohttp logs each malformed request it answers 400 with a traceback: any client could
    # flood the log. Handler errors are the gateway's own to log (its error middleware does).
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


def _forward(sig: signal.Signals, pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
