"""`cardinal sim` serves several cards from one process on consecutive ports."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gateway.prove.fleet import free_ports

CARDINAL = Path(sys.executable).with_name("cardinal")


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status
    except OSError:
        return 0


def test_two_cards_on_consecutive_ports() -> None:
    port = free_ports(2)
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


def _post_status(port: int) -> int:
    body = {"model": "deepseek-r1-distill-qwen-7b", "prompt": "hi", "max_tokens": 2}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_sim_from_a_plan_file_with_a_fault_on_one_card(tmp_path: Path) -> None:
    plan = tmp_path / "fleet.yaml"
    subprocess.run(
        [
            str(CARDINAL), "plan", "--model", "deepseek-r1-distill-qwen-7b", "--quant", "awq",
            "--gpu", "l4", "--target-qps", "10", "--prompt-tokens", "256", "--output-tokens", "64",
            "--ttft-slo", "1s", "--tpot-slo", "40ms", "-o", str(plan),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_ports(2)
    cmd = [str(CARDINAL), "sim", "--plan", str(plan), "--cards", "2", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--fault", "1:error_rate=100%"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _health(port + 1) != 200:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        assert (_post_status(port), _post_status(port + 1)) == (200, 500)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert "sim_event_loop_lag_seconds_bucket" in metrics
        assert 'vllm:num_requests_running{model_name="deepseek-r1-distill-qwen-7b"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_sim_rejects_plan_with_model_flags_and_bad_faults(tmp_path: Path) -> None:
    plan = tmp_path / "fleet.yaml"
    plan.write_text("version: 1\n")
    for args, flag in (
        (["--plan", str(plan), "--model", "llama-3.1-8b"], "--model"),
        (["--plan", str(plan)], "inputs.model"),
        (["--model", "llama-3.1-8b", "--quant", "awq"], "--gpu"),
        (
            ["--model", "llama-3.1-8b", "--quant", "awq", "--gpu", "l4", "--fault", "3:hang"],
            "--fault",
        ),
        (
            ["--model", "llama-3.1-8b", "--quant", "awq", "--gpu", "l4", "--fault", "error_rate=2"],
            "--fault",
        ),
    ):
        result = subprocess.run(
            [str(CARDINAL), "sim", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and flag in result.stderr, result.stderr


def test_a_taken_port_is_a_one_line_error_for_sim_and_serve(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(
            f"listen: 127.0.0.1:{port}\n"
            "backends:\n  - {name: c, url: 'http://127.0.0.1:9', model: m}\n"
        )
        sim = ["sim", "--model", "llama-3.1-8b", "--quant", "awq", "--gpu", "l4"]
        for args, flag in (
            ([*sim, "--port", str(port)], "--port"),
            (["serve", "--config", str(config)], "--listen"),
        ):
            result = subprocess.run(
                [str(CARDINAL), *args], capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 2, result.stderr
            assert result.stderr.count("\n") == 1 and flag in result.stderr, result.stderr
