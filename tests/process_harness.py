"""Real processes for the gateway's hardening tests: `redis-server` on a free port in a temporary
directory, and `cardinal serve` as users run it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CARDINAL = Path(sys.executable).with_name("cardinal")
# Locust's bounds on what it judges (10 s and 100 requests by default), lowered for the tests'
# runs of seconds: each is about something else (test_loadtest checks the defaults)
SHORT_RUN = {"LOCUST_MIN_WINDOW": "2s", "LOCUST_MIN_REQUESTS": "10"}
SIM_LAGGED = "the latencies measure the simulator, not the plan"


def judged(plan: Path, *args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    """`cardinal prove PLAN ARGS` (in the plan's folder, with SHORT_RUN's bounds) to a verdict
    the test can judge: run again, once, when a trial was voided because a simulated card's
    loop ran late on this shared machine (prove said so). A second void is returned as it is,
    and fails."""

    def prove() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CARDINAL), "prove", str(plan), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=plan.parent,
            env={**os.environ, **SHORT_RUN},
        )

    run = prove()
    if run.returncode == 2 and SIM_LAGGED in run.stdout:
        print(run.stdout)
        print("-- a simulated card ran late (the machine was busy): running the proof again --")
        run = prove()
    return run


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
needs_redis = pytest.mark.skipif(
    not Path(REDIS_SERVER).exists(), reason="redis-server not installed (make system)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(kw_only=True)
class RedisServer:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers."""
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir"]
        args += [str(self.dir), "--save", "", "--appendonly", "no", "--protected-mode", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as a crash: no goodbye to the clients
            self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), dir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(kw_only=True)
class GatewayProcess:
    proc: asyncio.subprocess.Process
    url: str
    lines: list[str]  # what it printed after the first line

    async def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout=timeout)

    async def read_rest(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().rstrip())


async def serve_gateway(
    config: Path, env: Mapping[str, str] | None = None, *args: str
) -> GatewayProcess:
    """`cardinal serve --config` (and `args`) in a process; returns once it listens."""
    proc = await asyncio.create_subprocess_exec(
        str(CARDINAL),
        "serve",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
    assert line.startswith("gateway: http://"), line
    return GatewayProcess(proc=proc, url=line.split()[1], lines=[])


async def sim_card(model: str, *, gpu: str) -> tuple[asyncio.subprocess.Process, str]:
    """`cardinal sim` with one card in a process of its own (so it can be SIGKILLed)."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(CARDINAL), "sim", "--model", model, "--quant", "awq", "--gpu", gpu,
        "--port", str(port), "--host", "127.0.0.1",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return proc, url
        except OSError:
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("cardinal sim did not start")
