"""The worker processes beyond the first: started, restarted when one dies, and stopped with the
parent, even by its death.

A worker that dies is restarted after a delay that doubles (from `FIRST_DELAY_S` up to
`MAX_DELAY_S`) each time it dies again within `STABLE_S` of its start, so a worker that cannot
start does not spin. Each worker holds the read end of a pipe whose only write end the parent
holds: when the parent dies, even by SIGKILL, the pipe reads end-of-file and the worker drains and
exits instead of serving on as an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
STABLE_S = 10.0  # a worker that lived this long before it died starts again after FIRST_DELAY_S
POLL_S = 0.25


class Workers:
    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], count: int) -> None:
        """`count` workers running `target(*args, lifeline)`; `lifeline` is the pipe's end to
        watch (see `watch_parent`)."""
        self._ctx = multiprocessing.get_context("spawn")
        self._lifeline, self._held = self._ctx.Pipe(duplex=False)  # the worker reads, we hold
        self._target = target
        self._args = args
        self.procs = [self._spawn(i) for i in range(count)]
        self._born = [time.monotonic()] * count
        self._delay = [FIRST_DELAY_S] * count
        self.restarts = 0
        self.stopping = False

    def _spawn(self, i: int) -> BaseProcess:
        proc = self._ctx.Process(
            target=self._target,
            args=(*self._args, self._lifeline),
            name=f"gateway-worker-{i + 1}",
            daemon=True,
        )
        proc.start()
        return proc

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    async def supervise(self, on_restart: Callable[[], None] = lambda: None) -> None:
        """Restart dead workers until `stopping`; runs until cancelled."""
        due: dict[int, float] = {}  # worker slot -> when to start it again
        while True:
            await asyncio.sleep(POLL_S)
            now = time.monotonic()
            for i, proc in enumerate(self.procs):
                if self.stopping or proc.is_alive():
                    continue
                if i not in due:
                    if now - self._born[i] >= STABLE_S:
                        self._delay[i] = FIRST_DELAY_S
                    delay = self._delay[i]
                    self._delay[i] = min(MAX_DELAY_S, delay * 2)
                    due[i] = now + delay
                    print(
                        f"gateway: worker {i + 1} (pid {proc.pid}) exited with code "
                        f"{proc.exitcode}; restarting it in {delay:g} s",
                        flush=True,
                    )
                elif now >= due[i]:
                    del due[i]
                    # a spawn writes the worker's arguments down a pipe: off the event loop
                    self.procs[i] = await asyncio.to_thread(self._spawn, i)
                    self._born[i] = time.monotonic()
                    self.restarts += 1
                    on_restart()
                    print(
                        f"gateway: worker {i + 1} restarted as pid {self.procs[i].pid}", flush=True
                    )

    def stop(self, timeout_s: float) -> None:
        """After the parent's own drain: the workers had the signal too; wait, then end them."""
        self.stopping = True
        for proc in self.procs:
            proc.terminate()  # a no-op for those already draining on the forwarded signal
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        self._held.close()


def watch_parent(lifeline: Connection, on_gone: Callable[[], None]) -> None:
    """In a worker: call `on_gone` once the parent has died (its end of the pipe closed)."""
    loop = asyncio.get_running_loop()
    fd = lifeline.fileno()

    def readable() -> None:
        loop.remove_reader(fd)  # end-of-file stays readable: once is enough
        on_gone()

    loop.add_reader(fd, readable)
