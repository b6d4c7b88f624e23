"""`make soak`: the gateway for SOAK_MINUTES (default 30) at 80 % of a planned fleet's capacity.

Plans the demo model on L4 cards, starts SOAK_CARDS simulated cards (`cardinal sim`) and the
gateway (`cardinal serve`, with a client key, per-key limits and, when `redis-server` is
installed, Redis), and drives streamed requests at the plan's prompt and output lengths as an
open-loop Poisson process. Every minute it prints the load's outcome and the gateway's RSS and
open file descriptors; at the end it compares them with their values after the warm-up. Exit 0:
growth under 10 %, no request lost; 1 otherwise.

    SOAK_MINUTES=5 .venv/bin/python -m tests.soak
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import yaml

from tests.process_harness import CARDINAL, REDIS_SERVER, RedisServer, free_port
from tests.test_gateway_fuzz import memory

PLAN = [
    "--model", "deepseek-r1-distill-qwen-7b", "--quant", "awq", "--gpu", "l4",
    "--engine", "vllm", "--target-qps", "15", "--prompt-tokens", "512", "--output-tokens", "128",
    "--ttft-slo", "2s", "--tpot-slo", "50ms",
]  # fmt: skip
LOAD = 0.8  # of the fleet's planned capacity
MAX_GROWTH = 0.10
SETTLE_S = 35.0  # past the gateway's idle timeouts (15 s for clients, 30 s upstream)
KEY = "sk-soak"


def main() -> int:
    minutes = float(os.environ.get("SOAK_MINUTES", "30"))
    cards = int(os.environ.get("SOAK_CARDS", "2"))
    with tempfile.TemporaryDirectory(prefix="cardinal-soak-") as tmp:
        return asyncio.run(soak(Path(tmp), minutes=minutes, cards=cards))


async def soak(tmp: Path, *, minutes: float, cards: int) -> int:
    plan_path = tmp / "fleet.yaml"
    subprocess.run(
        [str(CARDINAL), "plan", *PLAN, "-o", str(plan_path)], check=True, capture_output=True
    )
    plan = yaml.safe_load(plan_path.read_text())
    capacity = plan["replica"]["capacity_qps"] * cards
    qps = LOAD * capacity
    workload = plan["inputs"]["workload"]
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    redis = None
    if Path(REDIS_SERVER).exists():
        redis = RedisServer(port=free_port(), dir=tmp)
        redis.start()
    try:
        procs.append(
            subprocess.Popen(
                [str(CARDINAL), "sim", "--plan", str(plan_path), "--cards", str(cards),
                 "--port", str(port), "--host", "127.0.0.1", "--tokens-per-event", "8"],
                stdout=subprocess.DEVNULL,
            )
        )  # fmt: skip
        config = tmp / "gateway.yaml"
        config.write_text(yaml.safe_dump(_gateway_config(plan, port, cards, redis)))
        gateway = subprocess.Popen(
            [str(CARDINAL), "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            env={**os.environ, "SOAK_KEY": KEY},
        )
        procs.append(gateway)
        assert gateway.stdout is not None
        url = gateway.stdout.readline().decode().split()[1]
        await _wait_ready(url)
        print(
            f"soak: {minutes:g} min at {qps:.2f} requests/s = {LOAD:.0%} of {cards} x "
            f"{plan['replica']['capacity_qps']:g} (planned per-card capacity), "
            f"{workload['prompt_tokens']} prompt + {workload['output_tokens']} output tokens, "
            f"limits in {'Redis' if redis else 'memory'}",
            flush=True,
        )
        driver = Driver(url, qps=qps, prompt_tokens=workload["prompt_tokens"],
                        output_tokens=workload["output_tokens"])  # fmt: skip
        marks = await driver.run(minutes * 60, pid=gateway.pid)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
            if p.stdout is not None:
                p.stdout.close()
        if redis is not None:
            redis.stop()
    return _verdict(driver, marks)


def _gateway_config(plan: dict, port: int, cards: int, redis: RedisServer | None) -> dict:
    batch = plan["replica"]["max_batch"]
    limits = {"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000}
    return {
        "listen": "127.0.0.1:0",
        "backends": [
            {
                "name": f"card-{i}",
                "url": f"http://127.0.0.1:{port + i}",
                "model": plan["inputs"]["model"],
                "max_inflight": batch,
            }
            for i in range(cards)
        ],  # fmt: skip
        "admission": {"queue_size": batch * cards, "queue_timeout_s": 10},
        "auth": {"keys": [{"name": "soak", "key_env": "SOAK_KEY", "limits": limits}]},
        "limits": {"redis_url": redis.url} if redis else {},
    }


async def _wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not get ready")


class Driver:
    """Open-loop Poisson arrivals of streamed completions; every outcome counted."""

    def __init__(self, url: str, *, qps: float, prompt_tokens: int, output_tokens: int) -> None:
        self.url = url
        self.qps = qps
        self.body = {
            "model": "deepseek-r1-distill-qwen-7b",
            "prompt": "lorem " * (prompt_tokens * 4 // 6),  # the sim counts 4 bytes a token
            "max_tokens": output_tokens,
            "ignore_eos": True,
            "stream": True,
        }
        self.outcomes: Counter[str] = Counter()
        self.e2e: list[float] = []
        self.rng = random.Random(0)

    async def run(self, seconds: float, *, pid: int) -> dict[str, tuple[int, int]]:
        """Warm up, measure at rest, load, measure at rest again: (RSS KiB, fds) by name."""
        warm_up = min(60.0, max(20.0, seconds * 0.1))
        t0 = time.monotonic()
        await self._load(warm_up, pid=pid, t0=t0)
        marks = {"start": await self._at_rest(pid)}
        self._line(time.monotonic() - t0, marks["start"], "at rest after warm-up: the baseline")
        await self._load(seconds - warm_up, pid=pid, t0=t0)
        marks["end"] = await self._at_rest(pid)
        self._line(time.monotonic() - t0, marks["end"], "at rest at the end")
        return marks

    async def _at_rest(self, pid: int) -> tuple[int, int]:
        # Requests in flight and pooled keep-alive connections swing with the Poisson arrivals,
        # so both ends are measured with none: all ended, and the idle connections timed out.
        await asyncio.sleep(SETTLE_S)
        return memory(pid)

    async def _load(self, seconds: float, *, pid: int, t0: float) -> None:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            start = next_at = loop.time()
            report_at = start + 60
            tasks: set[asyncio.Task[None]] = set()
            while loop.time() - start < seconds:
                next_at += self.rng.expovariate(self.qps)
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                task = asyncio.create_task(self._one(http))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if loop.time() >= report_at:
                    report_at += 60
                    self._line(time.monotonic() - t0, memory(pid), "")
            if tasks:
                await asyncio.wait(tasks)

    async def _one(self, http: aiohttp.ClientSession) -> None:
        t0 = time.monotonic()
        headers = {"Authorization": f"Bearer {KEY}"}
        try:
            async with http.post(
                self.url + "/v1/completions", json=self.body, headers=headers
            ) as r:
                if r.status != 200:
                    await r.read()
                    self.outcomes[f"http {r.status}"] += 1
                    return
                done = error = False
                async for line in r.content:
                    if line.startswith(b"data: [DONE]"):
                        done = True
                    elif line.startswith(b'data: {"error"'):
                        error = True
                kind = "stream error" if error else "ok" if done else "lost (no [DONE])"
                self.outcomes[kind] += 1
                if kind == "ok":
                    self.e2e.append(time.monotonic() - t0)
        except (aiohttp.ClientError, TimeoutError) as e:
            self.outcomes[f"lost ({type(e).__name__})"] += 1

    def _line(self, elapsed: float, mark: tuple[int, int], note: str) -> None:
        rss, fds = mark
        e2e = sorted(self.e2e[-2000:])
        p50 = e2e[len(e2e) // 2] if e2e else 0.0
        p99 = e2e[int(len(e2e) * 0.99)] if e2e else 0.0
        outcomes = json.dumps(dict(self.outcomes))
        print(
            f"soak: {elapsed / 60:5.1f} min  gateway RSS {rss / 1024:6.1f} MiB  fds {fds:3d}  "
            f"e2e p50 {p50:.2f} s p99 {p99:.2f} s  {outcomes} {note}",
            flush=True,
        )


def _verdict(driver: Driver, marks: dict[str, tuple[int, int]]) -> int:
    (rss0, fd0), (rss1, fd1) = marks["start"], marks["end"]
    rss_growth, fd_growth = rss1 / rss0 - 1, fd1 / fd0 - 1
    lost = sum(n for kind, n in driver.outcomes.items() if kind.startswith("lost"))
    total = sum(driver.outcomes.values())
    ok = rss_growth < MAX_GROWTH and fd_growth < MAX_GROWTH and lost == 0
    print(
        f"soak: {total} requests, {driver.outcomes['ok']} ok, {lost} lost; gateway RSS "
        f"{rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB ({rss_growth:+.1%}), open fds {fd0} -> {fd1} "
        f"({fd_growth:+.1%}): {'PASS' if ok else 'FAIL'} (growth limit {MAX_GROWTH:.0%})",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
