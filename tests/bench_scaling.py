"""Does `cardinal serve --workers 2` scale? Measured where the gateway is the only busy program.

The main gateway benchmark proxies simulated cards and drives them from Python, and on a 2-core
machine those take the cores the second worker would need. Here the backend is nginx answering a
canned completion and the load comes from ApacheBench (`ab`, keep-alive, 64 connections): both in
C, together a small share of one core, so the workers get the rest.

    python -m tests.bench_scaling [--seconds 6]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.bench_gateway import free_port

BIN = Path(sys.executable).parent
COMPLETION = (
    '{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
    '"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
)
BODY = '{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'


def _nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    temp = " ".join(
        f"{k}_temp_path {tmp};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        f"daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; {temp}\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json;\n"
        f"    return 200 '{COMPLETION}'; }} }} }}\n"
    )
    return subprocess.Popen(["/usr/sbin/nginx", "-c", str(conf), "-p", str(tmp)])


def _ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _ab(url: str, body: Path, seconds: float) -> float:
    out = subprocess.run(
        ["ab", "-q", "-k", "-t", str(seconds), "-n", "10000000", "-c", "64", "-p", str(body)]
        + ["-T", "application/json", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    if failed:
        raise RuntimeError(f"ab saw {failed} failed requests:\n{out}")
    return float(re.search(r"Requests per second:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]


def _gateway_rps(tmp: Path, backend: str, workers: int, body: Path, seconds: float) -> float:
    port = free_port()
    config = tmp / f"gateway-{workers}.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nrouting: round_robin\nbackends:\n"
        f'  - {{name: canned, url: "{backend}", model: m, max_inflight: 1000}}\n'
    )
    proc = subprocess.Popen(
        [str(BIN / "cardinal"), "serve", "--config", str(config), "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _ready(f"http://127.0.0.1:{port}/healthz")
        _ab(f"http://127.0.0.1:{port}/v1/chat/completions", body, 1)  # warm-up
        return _ab(f"http://127.0.0.1:{port}/v1/chat/completions", body, seconds)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench_scaling")
    p.add_argument("--seconds", type=float, default=6.0)
    args = p.parse_args(argv)
    if not shutil.which("ab") or not Path("/usr/sbin/nginx").exists():
        print("scaling: skipped: needs ab (apache2-utils) and nginx; run `make system`")
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        body = tmp / "body.json"
        body.write_text(BODY)
        port = free_port()
        nginx = _nginx(tmp, port)
        try:
            backend = f"http://127.0.0.1:{port}"
            _ready(backend)
            direct = _ab(backend + "/v1/chat/completions", body, 2)
            one = _gateway_rps(tmp, backend, 1, body, args.seconds)
            two = _gateway_rps(tmp, backend, 2, body, args.seconds)
        finally:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(timeout=10)
    print(
        f"scaling: canned nginx backend {direct:,.0f} req/s direct; gateway 1 worker "
        f"{one:,.0f} req/s, 2 workers {two:,.0f} req/s = {two / one:.2f}x "
        f"(target >= 1.7x) {'met' if two / one >= 1.7 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
