"""Fault injection on a simulated card (by config and through /admin/faults); its loop-lag watch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.planner.catalog import load_catalog
from gateway.sim.card import card_from_catalog
from gateway.sim.engine import Engine
from gateway.sim.faults import FaultError, Faults, parse_fault_flag
from gateway.sim.lag import LagMonitor
from gateway.sim.server import CardConfig, create_app, engine_key

MODEL = "deepseek-r1-distill-qwen-1.5b"
MESSAGES = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def config() -> CardConfig:
    card = card_from_catalog(load_catalog(), model=MODEL, quant="awq", gpu="h100-sxm")
    return CardConfig(model_name=MODEL, speed=card.speed, engine=card.engine, seed=7)


@pytest_asyncio.fixture
async def card(config: CardConfig) -> AsyncIterator[tuple[str, Engine]]:
    app = create_app(config)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app[engine_key]
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def _set(http: aiohttp.ClientSession, url: str, **faults: object) -> dict[str, object]:
    async with http.post(url + "/admin/faults", json=faults) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _chat(stream: bool = False, max_tokens: int = 8) -> dict[str, object]:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens, "stream": stream}


@pytest.mark.asyncio
async def test_admin_error_rate_fails_that_share_with_openai_errors(
    card: tuple[str, Engine], http: aiohttp.ClientSession
) -> None:
    url, _ = card
    assert (await _set(http, url, error_rate="50%"))["error_rate"] == 0.5
    codes = []
    for _ in range(60):
        async with http.post(url + "/v1/chat/completions", json=_chat()) as resp:
            codes.append(resp.status)
            if resp.status == 500:
                body = await resp.json()
                assert body["error"]["type"] == "InternalServerError"
                assert "error_rate" in body["error"]["message"]
    assert set(codes) == {200, 500}
    assert 18 <= codes.count(500) <= 42  # seeded: the same run every time
    async with http.delete(url + "/admin/faults") as resp:
        assert (await resp.json())["error_rate"] == 0
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)


@pytest.mark.asyncio
async def test_admin_rejects_bad_faults_naming_the_field(
    card: tuple[str, Engine], http: aiohttp.ClientSession
) -> None:
    url, _ = card
    for body, field in (
        ({"error_rate": 2}, "error_rate"),
        ({"spike_s": "soon"}, "spike_s"),
        ({"hang": "maybe"}, "hang"),
        ({"explode": True}, "explode"),
        ({"crash_after": -1}, "crash_after"),
    ):
        async with http.post(url + "/admin/faults", json=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == field
    async with http.get(url + "/admin/faults") as resp:
        assert await resp.json() == Faults().as_dict()  # nothing half-applied


@pytest.mark.asyncio
async def test_latency_spike_delays_the_first_token(
    card: tuple[str, Engine], http: aiohttp.ClientSession
) -> None:
    url, _ = card
    await _set(http, url, spike_rate=1, spike_s="300ms")
    t0 = time.perf_counter()
    async with http.post(url + "/v1/chat/completions", json=_chat()) as resp:
        assert resp.status == 200
    assert time.perf_counter() - t0 >= 0.3


@pytest.mark.asyncio
async def test_hang_holds_requests_until_cleared(
    card: tuple[str, Engine], http: aiohttp.ClientSession
) -> None:
    url, _ = card
    await _set(http, url, hang=True)
    short = aiohttp.ClientTimeout(total=0.3)
    with pytest.raises(asyncio.TimeoutError):
        await http.get(url + "/health", timeout=short)
    pending = asyncio.ensure_future(http.post(url + "/v1/chat/completions", json=_chat()))
    await asyncio.sleep(0.2)
    assert not pending.done()
    await _set(http, url, hang=False)
    resp = await pending
    assert resp.status == 200
    resp.release()


@pytest.mark.asyncio
async def test_crash_mid_stream_cuts_the_connection(
    card: tuple[str, Engine], http: aiohttp.ClientSession
) -> None:
    url, engine = card
    await _set(http, url, crash_after=3)
    events = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            url + "/v1/chat/completions", json=_chat(stream=True, max_tokens=50)
        ) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events.append(line)
    assert len(events) == 1 + 3  # the role chunk and three tokens, then a reset: no [DONE]
    with pytest.raises(aiohttp.ClientError):
        async with http.post(url + "/v1/chat/completions", json=_chat(max_tokens=50)) as resp:
            await resp.read()
    await asyncio.sleep(0.05)
    assert engine.num_running == 0 and engine.kv_usage == 0  # the slots were freed


@pytest.mark.asyncio
async def test_admin_loading_restarts_the_loading_period(
    card: tuple[str, Engine], http: aiohttp.ClientSession
) -> None:
    url, _ = card
    await _set(http, url, loading_s=0.3)
    for path in ("/health", "/v1/chat/completions"):
        async with http.request(
            "GET" if path == "/health" else "POST", url + path, json=_chat()
        ) as r:
            assert r.status == 503
    await asyncio.sleep(0.35)
    async with http.get(url + "/health") as resp:
        assert resp.status == 200


def test_fault_flags_target_one_card_or_all() -> None:
    assert parse_fault_flag("1:error_rate=0.2", cards=3) == ([1], {"error_rate": "0.2"})
    assert parse_fault_flag("loading_s=30s", cards=2) == ([0, 1], {"loading_s": "30s"})
    assert parse_fault_flag("0:hang", cards=1) == ([0], {"hang": "true"})
    assert Faults().update({"loading_s": "30s", "spike_s": "250ms"}).spike_s == 0.25
    for spec, field in (("5:hang", "card"), ("error_rate=lots", "error_rate"), ("nap=1", "nap")):
        with pytest.raises(FaultError) as e:
            parse_fault_flag(spec, cards=2)
        assert e.value.field == field


@pytest.mark.asyncio
async def test_lag_monitor_warns_and_exports_a_blocked_loop(
    config: CardConfig, http: aiohttp.ClientSession
) -> None:
    warnings: list[str] = []
    lag = LagMonitor(interval_s=0.005, warn_s=0.02, window_s=0.03, warn=warnings.append)
    app = create_app(config, lag=lag)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.05)
        assert not warnings
        time.sleep(0.08)  # a CPU-bound stall of the loop, which is what the monitor is for
        await asyncio.sleep(0.02)
        assert warnings and "falling behind real time" in warnings[0]
        async with http.get(f"http://{host}:{port}/metrics") as resp:
            text = await resp.text()
        count = next(
            line
            for line in text.splitlines()
            if line.startswith("sim_event_loop_lag_seconds_count")
        )
        over = next(line for line in text.splitlines() if 'le="0.05"' in line)
        assert float(count.split()[-1]) > float(over.split()[-1])  # one wake-up > 50 ms late
    finally:
        task.cancel()
        await runner.cleanup()
