"""The processes a proof run starts: simulated cards and the gateway, each a `cardinal` command,
stopped with SIGTERM when the run ends."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway import planfile
from gateway.planfile import PlanFile
from gateway.render.gateway_config import SERVE_SLOTS, serve_data

CARDS_PER_PROCESS = 12  # `make bench` keeps loop lag p99 < 5 ms well above this on 2 cores


class FleetError(RuntimeError):
    pass


def cardinal() -> str:
    return str(Path(sys.executable).with_name("cardinal"))


def free_ports(n: int) -> int:
    """The first of `n` consecutive free loopback ports."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65535 and all(_free(base + i) for i in range(n)):
            return base
    raise FleetError(f"no {n} consecutive free ports on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_ready(url: str, proc: subprocess.Popen[Any] | None, *, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FleetError(
                f"{url}: the process exited with {proc.returncode} before it was ready"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise FleetError(f"{url} was not ready after {timeout_s:.0f} s")


@contextmanager
def process(argv: list[str], *, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class Cards:
    urls: list[str]
    logs: list[Path]


@contextmanager
def sim_cards(plan_path: Path, *, cards: int, tokens_per_event: int, logs: Path) -> Iterator[Cards]:
    """`cards` simulated cards of the plan, CARDS_PER_PROCESS to a process."""
    base = free_ports(cards)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(cards)]
    files = []
    with ExitStack() as stack:
        for first in range(0, cards, CARDS_PER_PROCESS):
            n = min(CARDS_PER_PROCESS, cards - first)
            log = logs / f"sim-{first // CARDS_PER_PROCESS}.log"
            files.append(log)
            argv = [cardinal(), "sim", "--plan", str(plan_path), "--cards", str(n)]
            argv += ["--port", str(base + first), "--tokens-per-event", str(tokens_per_event)]
            proc = stack.enter_context(process(argv, log=log))
            wait_ready(urls[first + n - 1] + "/health", proc)
        yield Cards(urls=urls, logs=files)


@contextmanager
def gateway(
    plan_path: Path, *, backends: list[str], log: Path, slots: Sequence[int | None] = ()
) -> Iterator[str]:
    """`cardinal serve` over the plan's `backends`, each with the plan's batch as its slots,
    or with its own where `slots` gives them (written to a gateway.yaml beside `log`)."""
    port = free_ports(1)
    argv = [cardinal(), "serve", "--plan", str(plan_path), "--backends", *backends]
    if any(slots):
        config = log.with_suffix(".yaml")
        config.write_text(yaml.safe_dump(gateway_config(plan_path, backends, slots)))
        argv = [cardinal(), "serve", "--config", str(config)]
    argv += ["--listen", f"127.0.0.1:{port}"]
    with process(argv, log=log) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/readyz", proc)
        yield url


def plan_batch(plan: PlanFile) -> int:
    """The slots the plan gives each replica (as `cardinal serve --plan` does)."""
    return int(plan.replica_concurrency or SERVE_SLOTS)


def gateway_config(
    plan_path: Path, urls: Sequence[str], slots: Sequence[int | None]
) -> dict[str, Any]:
    plan = planfile.read(plan_path.read_text(encoding="utf-8"))
    data = serve_data(plan, urls=urls, listen="127.0.0.1:8080", slots=slots)
    return {"backends": data["backends"]}  # `cardinal serve --listen` gives the address


def lagging(logs: list[Path]) -> bool:
    """Did a simulator warn that it fell behind real time (which voids the run)?"""
    return any(
        "falling behind real time" in p.read_text(errors="replace") for p in logs if p.exists()
    )
