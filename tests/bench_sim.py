"""How many simulated cards one `cardinal sim` process hosts on this machine while its event loop
keeps p99 lag under 10 ms, each card streaming tokens at a realistic rate."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from gateway import planfile
from gateway.planner.capacity import Workload
from gateway.planner.catalog import load_catalog
from gateway.planner.plan import make_plan, request_for
from gateway.planner.report import plan_dict
from gateway.prove.fleet import free_ports, wait_ready

CARDINAL = Path(sys.executable).with_name("cardinal")
MODEL = "deepseek-r1-distill-qwen-7b"
WORKLOAD = Workload(
    prompt_tokens=256, output_tokens=64, target_qps=10, ttft_slo_s=1.0, tpot_slo_s=0.04
)
LOAD = 0.8  # offered rate / the plan's capacity: a fleet running at its planned utilization
WARMUP_S, MEASURE_S = 4.0, 6.0
LAG_P99_S = 0.010  # the simulator's own warning threshold (gateway/sim/lag.py)


def _plan_file(directory: Path) -> tuple[Path, float]:
    catalog = load_catalog()
    plan = make_plan(
        request_for(catalog, model=MODEL, quant="awq", gpu="a10g", workload=WORKLOAD), catalog
    )
    assert plan.replica is not None
    path = directory / "fleet.yaml"
    path.write_text(planfile.dump(plan_dict(plan)))
    return path, plan.replica.capacity_qps


def _lag_buckets(url: str) -> tuple[float, float]:
    """(wake-ups within 10 ms, all wake-ups) so far."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    within = total = 0.0
    for line in lines:
        if line.startswith('sim_event_loop_lag_seconds_bucket{le="0.01"}'):
            within = float(line.split()[-1])
        elif line.startswith('sim_event_loop_lag_seconds_bucket{le="+Inf"}'):
            total = float(line.split()[-1])
    return within, total


async def _drive(urls: list[str], qps: float, seconds: float) -> tuple[int, int]:
    """Open-loop Poisson streams to every card; returns (requests finished, bytes read)."""
    body = {"model": MODEL, "prompt": "x" * 1024, "max_tokens": 64, "stream": True}
    done = nbytes = 0

    async def one(http: aiohttp.ClientSession, url: str) -> None:
        nonlocal done, nbytes
        async with http.post(url + "/v1/completions", json=body) as resp:
            async for chunk in resp.content.iter_any():
                nbytes += len(chunk)
        done += 1

    async def card(http: aiohttp.ClientSession, url: str, seed: int) -> None:
        rng, tasks = random.Random(seed), []
        end = time.perf_counter() + seconds
        due = time.perf_counter()
        while (due := due + rng.expovariate(qps)) < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(http, url)))
        await asyncio.gather(*tasks, return_exceptions=True)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(card(http, url, i) for i, url in enumerate(urls)))
    return done, nbytes


def trial(plan: Path, qps: float, cards: int, tokens_per_event: int) -> tuple[float, float]:
    """(share of wake-ups later than 10 ms, streamed tokens/s per card) for `cards` cards."""
    port = free_ports(cards)
    proc = subprocess.Popen(
        [str(CARDINAL), "sim", "--plan", str(plan), "--cards", str(cards), "--port", str(port)]
        + ["--tokens-per-event", str(tokens_per_event)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    urls = [f"http://127.0.0.1:{port + i}" for i in range(cards)]
    try:
        wait_ready(urls[-1] + "/health", proc)

        async def run() -> tuple[float, float]:
            load = asyncio.create_task(_drive(urls, qps, WARMUP_S + MEASURE_S))
            await asyncio.sleep(WARMUP_S)
            w0, n0 = await asyncio.to_thread(_lag_buckets, urls[0])
            await asyncio.sleep(MEASURE_S)
            w1, n1 = await asyncio.to_thread(_lag_buckets, urls[0])
            await load
            return 1 - (w1 - w0) / max(n1 - n0, 1), n1 - n0

        late, _ = asyncio.run(run())
        return late, qps * WORKLOAD.output_tokens
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def max_cards(plan: Path, qps: float, tokens_per_event: int) -> int:
    """Largest card count with p99 lag under 10 ms: doubling, then bisection."""
    good, bad, n = 0, None, 1
    while bad is None:
        late, _ = trial(plan, qps, n, tokens_per_event)
        print(f"  {n:3d} cards, {tokens_per_event} token(s)/event: {late:6.2%} of wake-ups > 10 ms")
        if late <= 0.01:
            good, n = n, n * 2
        else:
            bad = n
    while bad - good > max(1, good // 8):
        n = (good + bad) // 2
        late, _ = trial(plan, qps, n, tokens_per_event)
        print(f"  {n:3d} cards, {tokens_per_event} token(s)/event: {late:6.2%} of wake-ups > 10 ms")
        good, bad = (n, bad) if late <= 0.01 else (good, n)
    return good


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plan, capacity = _plan_file(Path(tmp))
        qps = LOAD * capacity
        print(
            f"sim: {MODEL} AWQ on A10G, {qps:.1f} QPS per card ({LOAD:.0%} of the plan's "
            f"{capacity:.1f}), {WORKLOAD.output_tokens} tokens each = "
            f"{qps * WORKLOAD.output_tokens:.0f} streamed tokens/s per card"
        )
        for per_event in (1, 8):
            n = max_cards(plan, qps, per_event)
            print(
                f"sim: {n} cards per process keep event-loop lag p99 < 10 ms at "
                f"{per_event} token(s) per SSE event ({n * qps * WORKLOAD.output_tokens:,.0f} "
                "tokens/s in all; the load generator shares this machine's 2 cores)"
            )


if __name__ == "__main__":
    main()
