"""Three `cardinal serve` replicas sharing one real `redis-server` enforce one per-key limit, not
three (LiteLLM's multi-instance limits once multiplied by the replica count)."""

from __future__ import annotations

import asyncio
import contextlib
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


WORKER_RPM = 30


@pytest.mark.asyncio
@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=needs_redis)])
async def test_two_workers_hold_one_limit(tmp_path: Path, store: str) -> None:
    """`cardinal serve --workers 2`: a 30-per-minute key gets 30 requests, not one bucket each."""
    card = await start_card()
    limits: dict[str, object] = {"default": {"requests_per_minute": WORKER_RPM}}
    with contextlib.ExitStack() as stack:
        if store == "redis":
            limits["redis_url"] = stack.enter_context(redis_server(tmp_path)).url
        path = tmp_path / "gateway.yaml"
        config = {
            "listen": "127.0.0.1:0",
            "backends": [{"name": "card", "url": card.url, "model": MODEL}],
            "auth": {"keys": [{"name": "team", "key_env": "TEAM_KEY"}]},
            "limits": limits,
        }
        path.write_text(yaml.safe_dump(config))
        gw = await serve_gateway(path, {"TEAM_KEY": "sk-team"}, "--workers", "2")
        try:
            await _listening(int(gw.url.rsplit(":", 1)[1]), sockets=2)
            statuses = await _burst(gw.url, 2 * WORKER_RPM)
        finally:
            assert await gw.stop() == 0
    await card.stop()
    admitted = statuses.count(200)
    print(f"\n--workers 2, limits in {store}: {admitted} of {len(statuses)} admitted")
    assert set(statuses) == {200, 429}
    assert abs(admitted - WORKER_RPM) <= 1


async def _listening(port: int, *, sockets: int) -> None:
    """Wait until `sockets` processes listen on `port` (each SO_REUSEPORT listener is a row)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
        listening = [
            r for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A"
        ]
        if len(listening) >= sockets:
            return
        assert asyncio.get_running_loop().time() < deadline, "the second worker never listened"
        await asyncio.sleep(0.1)


async def _burst(url: str, n: int) -> list[int]:
    """`n` requests at once, each on a connection of its own (the kernel spreads connections,
    not requests, over the workers)."""
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    headers = {"Authorization": "Bearer sk-team"}
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> int:
            async with http.post(url + "/v1/completions", json=body, headers=headers) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one() for _ in range(n))))
