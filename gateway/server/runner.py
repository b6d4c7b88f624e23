"""Running the gateway: one process, or N worker processes sharing the port with SO_REUSEPORT.

Each worker is a whole gateway with its own backends' state and metrics; the kernel spreads
connections over them. Prometheus should scrape each worker (or run one worker per container).
Per-key limits are one set for all workers: the first process holds them and answers the others
over a Unix socket (`shared_limits.py`), Redis or not.
SIGHUP reloads the config in every worker; SIGTERM (or SIGINT) stops accepting connections, lets
the requests in flight finish within `server.drain_timeout_s`, ends those still running (a stream
with an error event, any other request with a 503), then exits.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.server.app import (
    create_app,
    live_key,
    metrics_key,
    ops_app,
    proxy_key,
    reloader_key,
)
from gateway.server.bucket import LocalStore
from gateway.server.config import GatewayConfig
from gateway.server.connections import CappedSite
from gateway.server.shared_limits import store_app
from gateway.server.workers import Workers, watch_parent

log = logging.getLogger("cardinal.gateway")

CUT_GRACE_S = 1.0  # after the drain deadline: for the cut requests to tell their clients
Loader = Callable[[], GatewayConfig]  # reads gateway.yaml again (the CLI's, for reloads)


async def start(
    app: web.Application,
    *,
    sock: socket.socket | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    reuse_port: bool = False,
    shutdown_timeout: float = 10.0,
    ops_sock: socket.socket | None = None,
) -> web.AppRunner:
    """Serve `app` on `sock`, or on host:port; the caller cleans the runner up.

    A gateway app gets its `server` settings: the connection caps, and the header timeout; and
    with `metrics.listen`, its operations endpoints there (on `ops_sock`, if bound already)."""
    server = app[live_key].config.server if live_key in app else None
    # auto_decompress off: the gateway inflates compressed bodies itself, bounded (inflate.py)
    kwargs = (
        {}
        if server is None
        else {"keepalive_timeout": server.header_timeout_s, "auto_decompress": False}
    )
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
    listen = app[live_key].config.metrics.listen if server is not None else None
    if listen is not None:
        ops = await _start_ops(app, ops_sock or bound_socket(*listen))
        app.on_cleanup.append(lambda _: ops.cleanup())  # last: /readyz answers through a drain
    await runner.setup()
    site: web.BaseSite
    if server is not None:
        metrics = app[metrics_key]
        sock = sock or bound_socket(host, port)
        site = capped = CappedSite(
            runner,
            sock,
            max_connections=server.max_connections,
            max_per_client=server.max_connections_per_client,
            on_refuse=lambda reason: metrics.child(metrics.refused, reason).inc(),
        )
        metrics.connections.set_function(lambda: capped.open)
    elif sock is not None:
        site = web.SockSite(runner, sock)
    else:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    await site.start()
    return runner


async def _start_ops(app: web.Application, sock: socket.socket) -> web.AppRunner:
    ops = web.AppRunner(ops_app(app), access_log=None, shutdown_timeout=CUT_GRACE_S)
    await ops.setup()
    await web.SockSite(ops, sock).start()
    return ops


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
    """Serve until SIGINT or SIGTERM; workers beyond the first are child processes, restarted
    when they die (`workers.py`).

    `load` reads the config again on SIGHUP (None: SIGHUP is ignored)."""
    _logging()
    sock = bound_socket(config.host, config.port)
    port = sock.getsockname()[1]
    listen = config.metrics.listen
    ops_sock = bound_socket(*listen) if listen is not None else None
    # Listening before the workers start, so that their first requests wait for an answer.
    tmp = tempfile.mkdtemp(prefix="cardinal-limits-") if workers > 1 else None
    limits_sock = _unix_socket(str(Path(tmp) / "limits.sock")) if tmp else None
    path = limits_sock.getsockname() if limits_sock else None
    others = Workers(_worker, (config, port, load, path), workers - 1) if workers > 1 else None
    policy = config.routing.policy
    ops = (
        f"; /metrics at http://{config.metrics.listen[0]}:{ops_sock.getsockname()[1]}"
        if ops_sock
        else ""
    )
    print(
        f"gateway: http://{config.host}:{port} -> {len(config.backends)} backends, "
        f"routing {policy}, {workers} worker{'s' if workers > 1 else ''}{ops}",
        flush=True,
    )
    try:
        run(
            _serve_until_signal(
                config,
                sock=sock,
                ops_sock=ops_sock,
                load=load,
                workers=others,
                limits_sock=limits_sock,
            )
        )
    finally:
        if others is not None:
            others.stop(timeout_s=config.server.drain_timeout_s + 5)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _worker(
    config: GatewayConfig, port: int, load: Loader | None, limits: str | None, lifeline: Connection
) -> None:
    _logging()
    run(_serve_until_signal(config, port=port, load=load, parent_limits=limits, lifeline=lifeline))


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
    ops_sock: socket.socket | None = None,
    port: int = 0,
    load: Loader | None = None,
    workers: Workers | None = None,
    limits_sock: socket.socket | None = None,
    parent_limits: str | None = None,
    lifeline: Connection | None = None,
) -> None:
    """The first process (`workers`: the others, which it supervises) or one of the others
    (`lifeline`: the pipe that closes when the first one dies)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop(sig: signal.Signals) -> None:
        if workers is not None:
            workers.stopping = True
            workers.signal(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop, sig)
    drain_s = config.server.drain_timeout_s
    store = LocalStore()
    app = create_app(config, load_config=load, limits=store, parent_limits=parent_limits)
    shared = await start(store_app(store), sock=limits_sock) if limits_sock else None
    # The drain below waits for the requests; aiohttp's own shutdown only closes what is left.
    runner = await start(
        app,
        sock=sock,
        ops_sock=ops_sock,
        host=config.host,
        port=port,
        reuse_port=True,
        shutdown_timeout=CUT_GRACE_S,
    )
    tasks: set[asyncio.Task[object]] = set()

    def on_hup() -> None:
        if workers is not None:
            workers.signal(signal.SIGHUP)
        task = asyncio.create_task(app[reloader_key].reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def orphaned() -> None:
        print("gateway: the parent process is gone; stopping", flush=True)
        stop.set()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if lifeline is not None:
        watch_parent(lifeline, orphaned)
    supervisor = None
    if workers is not None:
        supervisor = asyncio.create_task(workers.supervise(app[metrics_key].worker_restarts.inc))
    try:
        await stop.wait()
        if supervisor is not None:
            supervisor.cancel()
        await _drain(app, runner, drain_s)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await runner.cleanup()  # closes what the drain left, then the app
        if shared is not None:  # last: the workers settle their requests here as they drain
            await shared.cleanup()
    print("gateway: stopped", flush=True)


async def _drain(app: web.Application, runner: web.AppRunner, drain_s: float) -> None:
    """Stop taking connections, close the idle ones, give the requests in flight `drain_s` to
    finish, then end the rest: streams with an error event, the others with a 503."""
    app[live_key].draining = True
    inflight = app[proxy_key].inflight
    print(
        f"gateway: draining {len(inflight.tasks)} requests in flight (up to {drain_s:g} s)",
        flush=True,
    )
    for site in list(runner.sites):
        await site.stop()
    await asyncio.sleep(0)  # requests accepted before the close start their handlers
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close now, busy ones after
    if await inflight.finished(drain_s):
        return
    n = inflight.cut()
    print(f"gateway: drain deadline passed: {n} requests ended with an error", flush=True)
    await inflight.finished(CUT_GRACE_S)


def _logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="gateway: %(message)s")
    # aiohttp logs each malformed request it answers 400 with a traceback: any client could
    # flood the log. Handler errors are the gateway's own to log (its error middleware does).
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
