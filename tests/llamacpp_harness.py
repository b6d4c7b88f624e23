"""Real llama.cpp `llama-server` processes on loopback, serving the tiny model, for the tests."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.prove.fleet import free_ports
from tests import llama_server
from tests.gateway_harness import MODEL


def binary() -> Path:
    """The llama-server binary; fails (never skips) when it is missing: `make test` builds it."""
    found = llama_server.find()
    if found is None:
        pytest.fail(
            f"no llama-server binary at {llama_server.cached_binary()} (nor in "
            f"${llama_server.ENV_VAR}): run `make llama-server` (it builds llama.cpp once, "
            "about 10 minutes)",
            pytrace=False,
        )
    return found


@dataclass(kw_only=True)
class LlamaServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """Gone at once, as a crashed engine is (no graceful drain)."""
        self.proc.kill()
        self.proc.wait()


# served under the gateway tests' model name (llama-server answers to its --alias)
def server_args(model: Path, *, port: int, parallel: int = 4, threads: int = 1) -> list[str]:
    # -c is shared by the slots: 4 x 1024 tokens each; one thread per server, the machine is small
    return [
        str(binary()), "-m", str(model), "--alias", MODEL, "--host", "127.0.0.1",
        "--port", str(port), "-np", str(parallel), "-c", str(1024 * parallel), "--metrics",
        "-t", str(threads), "-tb", str(threads), "--no-webui",
    ]  # fmt: skip


@contextmanager
def llama_servers(
    argvs: Sequence[list[str]], *, logs: Path, wait: bool = True
) -> Iterator[list[LlamaServer]]:
    """Start each command line (its --port in it); stop them all with SIGTERM at the end."""
    with ExitStack() as stack:
        servers = []
        for i, argv in enumerate(argvs):
            port = argv[argv.index("--port") + 1]
            log = logs / f"llama-server-{i}.log"
            out = stack.enter_context(log.open("wb"))
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            stack.callback(_stop, proc)
            servers.append(LlamaServer(url=f"http://127.0.0.1:{port}", proc=proc, log=log))
        if wait:
            for s in servers:
                wait_healthy(s)
        yield servers


def start_args(model: Path, n: int, **kw: object) -> list[list[str]]:
    base = free_ports(n)
    return [server_args(model, port=base + i, **kw) for i in range(n)]  # type: ignore[arg-type]


def wait_healthy(s: LlamaServer, *, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            pytest.fail(f"llama-server exited with {s.proc.returncode}:\n{s.output()[-3000:]}")
        try:
            with urllib.request.urlopen(s.url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    pytest.fail(
        f"llama-server at {s.url} not healthy after {timeout_s:.0f} s:\n{s.output()[-3000:]}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
