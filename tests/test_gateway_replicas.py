"""Three `cardinal serve` replicas sharing one real `redis-server` enforce one per-key limit, not
three (LiteLLM's multi-instance limits once multiplied by the replica count)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.gateway_harness import MODEL, start_card
from tests.process_harness import needs_redis, redis_server, serve_gateway

RPM = 1200  # 20 requests a second for the key, whichever replica they reach
BURST = 10
OFFERED = 45.0  # requests a second, spread evenly over the replicas
SECONDS = 8.0


@needs_redis
@pytest.mark.asyncio
async def test_three_replicas_hold_one_limit_within_ten_percent(tmp_path: Path) -> None:
    card = await start_card()
    with redis_server(tmp_path) as redis:
        path = tmp_path / "gateway.yaml"
        config = {
            "listen": "127.0.0.1:0",
            "backends": [{"name": "card", "url": card.url, "model": MODEL}],
            "auth": {"keys": [{"name": "team", "key_env": "TEAM_KEY"}]},
            "limits": {
                "redis_url": redis.url,
                "redis_timeout_s": 2,  # a loaded test machine is not a Redis outage
                "default": {"requests_per_minute": RPM, "burst_requests": BURST},
            },
        }
        path.write_text(yaml.safe_dump(config))
        env = {"TEAM_KEY": "sk-team"}
        replicas = await asyncio.gather(*(serve_gateway(path, env) for _ in range(3)))
        try:
            statuses, span_s = await _drive([r.url for r in replicas])
            errors = [await _redis_errors(r.url) for r in replicas]
        finally:
            for r in replicas:
                assert await r.stop() == 0
    await card.stop()
    admitted = statuses.count(200)
    rate = (admitted - BURST) / span_s  # the span actually taken: a busy loop sends late
    want = RPM / 60
    print(
        f"\n3 replicas, one Redis: {len(statuses)} requests offered at {OFFERED:g}/s over "
        f"{span_s:.2f} s, {admitted} admitted, {statuses.count(429)} refused 429: "
        f"{rate:.2f} requests/s against a limit of {want:g}/s ({(rate / want - 1):+.1%})"
    )
    assert errors == [0, 0, 0]  # else some replicas fell back to local limits
    assert set(statuses) <= {200, 429}
    assert abs(rate / want - 1) <= 0.10


async def _drive(urls: list[str]) -> tuple[list[int], float]:
    """Each request's status, and the seconds from the first send to the last."""
    loop = asyncio.get_running_loop()
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    headers = {"Authorization": "Bearer sk-team"}

    async def one(http: aiohttp.ClientSession, url: str) -> int:
        async with http.post(url + "/v1/completions", json=body, headers=headers) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as http:
        start = loop.time()
        tasks = []
        for i in range(int(OFFERED * SECONDS)):
            await asyncio.sleep(max(0.0, start + i / OFFERED - loop.time()))
            tasks.append(asyncio.create_task(one(http, urls[i % len(urls)])))
        span_s = loop.time() - start
        return list(await asyncio.gather(*tasks)), span_s


async def _redis_errors(url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("gateway_redis_errors_total "):
                return float(line.split()[1])
    return 0.0
