"""The processes a proof run starts: simulated cards and the gateway, each a `cardinal` command,
stopped with SIGTERM when the run ends; on an interrupt all of them at once (stop_all)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
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
from gateway.render.fleet import SERVE_SLOTS
from gateway.render.gateway_config import serve_data

CARDS_PER_PROCESS = 12  # `make bench` keeps loop lag p99 < 10 ms well above this on 2 cores
STOP_S = 20  # a child's graceful stop (the gateway drains its streams)
INTERRUPTED_STOP_S = 2  # after an interrupt: nothing is judged, so nothing is worth waiting for

_LIVE: set[subprocess.Popen[Any]] = set()
_INTERRUPTED = threading.Event()


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
    """`argv` running with its output in `log`, started afresh: a report directory reused by
    another run must not carry that run's lines (its simulator warnings would void this one)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    with tracked(proc):
        yield proc


@contextmanager
def tracked(proc: subprocess.Popen[Any]) -> Iterator[None]:
    """Stop `proc` when the block ends (SIGTERM, then SIGKILL after STOP_S, or after
    INTERRUPTED_STOP_S once the run is interrupted); stop_all reaches it meanwhile."""
    _LIVE.add(proc)
    try:
        yield
    finally:
        _LIVE.discard(proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=INTERRUPTED_STOP_S if _INTERRUPTED.is_set() else STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stop_all() -> bool:
    """An interrupt: SIGTERM to every process this run started, at once, so their stops overlap
    instead of queueing one after another as the run unwinds. False when the run was already
    interrupted (a second Ctrl-C must not cut the cleanup short)."""
    if _INTERRUPTED.is_set():
        return False
    _INTERRUPTED.set()
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    return True


def new_run() -> None:
    """A run starts uninterrupted (the flag outlives a run when prove runs in-process)."""
    _INTERRUPTED.clear()


@dataclass(frozen=True)
class Cards:
    urls: list[str]
    logs: list[Path]


@contextmanager
def sim_cards(
    plan_path: Path, *, cards: int, tokens_per_event: int, logs: Path, role: str = "replica"
) -> Iterator[Cards]:
    """`cards` simulated cards of the plan (`role`: its replicas, or groups of its at-scale
    layout), CARDS_PER_PROCESS to a process."""
    base = free_ports(cards)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(cards)]
    files = []
    with ExitStack() as stack:
        for first in range(0, cards, CARDS_PER_PROCESS):
            n = min(CARDS_PER_PROCESS, cards - first)
            tag = "" if role == "replica" else f"{role}-"
            log = logs / f"sim-{tag}{first // CARDS_PER_PROCESS}.log"
            files.append(log)
            argv = [cardinal(), "sim", "--plan", str(plan_path), "--cards", str(n)]
            argv += ["--port", str(base + first), "--tokens-per-event", str(tokens_per_event)]
            argv += [] if role == "replica" else ["--role", role]
            proc = stack.enter_context(process(argv, log=log))
            wait_ready(urls[first + n - 1] + "/health", proc)
        yield Cards(urls=urls, logs=files)


@contextmanager
def gateway(
    plan_path: Path,
    *,
    backends: list[str],
    log: Path,
    slots: Sequence[int | None] = (),
    config: dict[str, Any] | None = None,
    policy: str | None = None,
) -> Iterator[str]:
    """`cardinal serve` over the plan's `backends`, each with the plan's batch as its slots,
    or with its own where `slots` gives them, routing by `policy` instead of the rendered one;
    `config` (a gateway.yaml's data, no `listen`) instead of all of those. A written config goes
    to a gateway.yaml beside `log`."""
    port = free_ports(1)
    argv = [cardinal(), "serve", "--plan", str(plan_path), "--backends", *backends]
    if config is None and (any(slots) or policy):
        config = gateway_config(plan_path, backends, slots)
        if policy:
            config["routing"]["policy"] = policy
    if config is not None:
        path = log.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        argv = [cardinal(), "serve", "--config", str(path)]
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
    del data["listen"]  # `cardinal serve --listen` gives the address
    return data
