"""Active health: probe ejected and warming backends (with backoff) and re-admit them; recheck the
healthy ones now and then, so an idle gateway notices a dead backend before a client does.

Any answer below 500 means the server is up: an OpenAI-compatible server without the health path
answers 404, one behind auth 401, and both would serve a request. 503 means loading (llama.cpp's
"Loading model", vLLM while starting): warming, not dead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from gateway.server.admission import Admission
from gateway.server.backend import Backend
from gateway.server.config import HealthConfig

RECHECK_INTERVALS = 5  # a healthy backend is probed every this many intervals


class Prober:
    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        config: HealthConfig,
        session: aiohttp.ClientSession,
        admission: Admission,
    ) -> None:
        self.backends = backends
        self.config = config
        self.session = session
        self.admission = admission
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._probing: set[Backend] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def reconfigure(self, config: HealthConfig) -> None:
        self.config = config
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)

    async def run(self) -> None:
        """Probe every backend once now, then whichever is due; cancel the task to stop."""
        loop = asyncio.get_running_loop()
        tick = min(0.25, self.config.interval_s / 2)
        for b in self.backends:
            b.next_probe_s = 0.0
        try:
            while True:
                now = loop.time()
                for b in self.backends:
                    if b.next_probe_s <= now and b not in self._probing:
                        self._start(b)
                await asyncio.sleep(tick)
        finally:
            for task in self._tasks:
                task.cancel()

    def _start(self, b: Backend) -> None:
        self._probing.add(b)
        task = asyncio.create_task(self.probe(b), name=f"probe-{b.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def probe(self, b: Backend) -> None:
        """One probe: below 500 admits, 503 means warming, anything else ejects with backoff."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        try:
            async with self.session.get(b.url + cfg.path, timeout=self._timeout) as r:
                status, text = r.status, (await r.read())[:200].decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as e:
            status, text = 0, f"{type(e).__name__}: {e}"
        finally:
            self._probing.discard(b)
        now = loop.time()
        if 200 <= status < 500:
            was_up = b.up
            b.admit()
            b.next_probe_s = now + cfg.interval_s * RECHECK_INTERVALS
            if not was_up:
                self.admission.wake(b)
        elif status == 503:
            b.warming(f"warming: {text}", now=now, base_s=cfg.interval_s)
        else:
            error = text if status == 0 else f"health {status}: {text}"
            b.eject(error, now=now, base_s=cfg.interval_s, max_s=cfg.max_backoff_s)
