"""Several simulated cards served from one process, on consecutive ports."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from gateway.sim.lag import LagMonitor
from gateway.sim.server import CardConfig, create_app


async def serve_cards(configs: list[CardConfig], *, host: str, port: int) -> None:
    """Serve card i on `port + i` until SIGINT or SIGTERM; one loop-lag watch for them all."""
    lag = LagMonitor()
    runners = [web.AppRunner(create_app(c, lag=lag), handler_cancellation=True) for c in configs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    lag_task = asyncio.create_task(lag.run(), name="sim-lag")
    try:
        for i, runner in enumerate(runners):
            await runner.setup()
            await web.TCPSite(runner, host, port + i).start()
            print(f"card {i}: http://{host}:{port + i} serving {configs[i].model_name}", flush=True)
        await stop.wait()
    finally:
        lag_task.cancel()
        for runner in runners:
            await runner.cleanup()
