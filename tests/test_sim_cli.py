"""`cardinal sim` serves several cards from one process on consecutive ports."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CARDINAL = Path(sys.executable).with_name("cardinal")


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status
    except OSError:
        return 0


def test_two_cards_on_consecutive_ports() -> None:
    port = _free_port_pair()
    cmd = [
        str(CARDINAL),
        "sim",
        "--model",
        "deepseek-r1-distill-qwen-1.5b",
        "--quant",
        "awq",
        "--gpu",
        "h100-sxm",
        "--cards",
        "2",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (_health(port) == _health(port + 1) == 200):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        assert _health(port) == 200
        assert _health(port + 1) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert f"card 1: http://127.0.0.1:{port + 1}" in out


def test_sim_unknown_gpu_is_one_line() -> None:
    result = subprocess.run(
        [str(CARDINAL), "sim", "--model", "llama-3.1-8b", "--quant", "awq", "--gpu", "h100-pci"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--gpu" in result.stderr
