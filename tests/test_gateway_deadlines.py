"""A request's deadlines (`timeouts.first_byte_s`, `timeouts.total_s`, per model): a backend that
trickles bytes is cut at the deadline though each gap is shorter than `read_s`, and one that keeps
missing it leaves the rotation. Real servers on loopback: drip-feeding backends."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.server.app import backends_key, create_app
from gateway.server.config import parse
from gateway.server.deadline import TICK_S, DeadlineWatch
from tests.gateway_harness import MODEL, Served, fake_upstream, serve

DRIP_S = 0.2  # each gap, far below read_s


async def _drip(request: web.Request) -> web.StreamResponse:
    """Answers at once, then a byte of the body (or an event of a stream) every DRIP_S, for ever."""
    body = await request.json()
    stream = body.get("stream", False)
    ctype = "text/event-stream" if stream else "application/json"
    resp = web.StreamResponse(headers={"Content-Type": ctype})
    await resp.prepare(request)
    if not stream:
        await resp.write(b'{"choices": [{"text": "')
    for i in range(10_000):
        await resp.write(b'data: {"choices":[{"text":"t%d"}]}\n\n' % i if stream else b"x")
        await asyncio.sleep(DRIP_S)
    return resp


async def _silent(request: web.Request) -> web.Response:
    await asyncio.sleep(30)  # no headers for a long time
    return web.json_response({})


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _gateway(
    handler: Any, timeouts: dict[str, Any], **top: Any
) -> tuple[Served, Served, CollectorRegistry]:
    up = await fake_upstream(post_v1_completions=handler, get_health=_health)
    config = parse(
        {
            "listen": "127.0.0.1:0",
            "backends": [{"name": "drip", "url": up.url, "model": MODEL}],
            "health": {"interval_s": 30},
            "timeouts": {"read_s": 5, **timeouts},
            **top,
        },
        env={},
    )
    registry = CollectorRegistry()
    gw = await serve(create_app(config, registry=registry))
    return up, gw, registry


def _misses(registry: CollectorRegistry, stage: str) -> float:
    labels = {"backend": "drip", "stage": stage}
    return registry.get_sample_value("gateway_deadline_misses_total", labels) or 0.0


BODY = {"model": MODEL, "prompt": "hi", "max_tokens": 4}


@pytest.mark.asyncio
async def test_a_trickling_stream_is_cut_at_the_total_deadline() -> None:
    up, gw, registry = await _gateway(_drip, {"total_s": 1.0})
    events: list[bytes] = []
    try:
        t0 = time.monotonic()
        async with (
            aiohttp.ClientSession() as http,
            http.post(gw.url + "/v1/completions", json={**BODY, "stream": True}) as r,
        ):
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b"data: "):
                    events.append(line.strip())
        took = time.monotonic() - t0
        misses = _misses(registry, "total")
    finally:
        await gw.stop()
        await up.stop()
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["type"] == "upstream_error", events[-2:]
    assert len(events) > 2  # it was relayed until then
    assert 0.95 < took < 1.5, took
    assert misses == 1


@pytest.mark.asyncio
async def test_a_trickling_body_is_cut_at_the_total_deadline_with_a_504() -> None:
    up, gw, registry = await _gateway(_drip, {"total_s": 1.0})
    try:
        t0 = time.monotonic()
        async with (
            aiohttp.ClientSession() as http,
            http.post(gw.url + "/v1/completions", json=BODY) as r,
        ):
            status, answer = r.status, await r.json()
        took = time.monotonic() - t0
        misses = _misses(registry, "total")
    finally:
        await gw.stop()
        await up.stop()
    assert status == 504 and answer["error"]["code"] == "upstream_timeout", answer
    assert 0.95 < took < 1.5, took
    assert misses == 1  # the deadline left no time for another attempt


@pytest.mark.asyncio
async def test_no_first_byte_in_time_is_retried_then_504_and_the_backend_leaves_rotation() -> None:
    up, gw, registry = await _gateway(
        _silent,
        {"first_byte_s": 0.3, "total_s": 20},
        health={"interval_s": 30, "failure_threshold": 2},
        max_attempts=1,
    )
    try:
        async with aiohttp.ClientSession() as http:
            results = []
            for _ in range(3):
                t0 = time.monotonic()
                async with http.post(gw.url + "/v1/completions", json=BODY) as r:
                    results.append((r.status, (await r.json())["error"]["code"]))
                results[-1] += (time.monotonic() - t0,)  # type: ignore[assignment]
        misses = _misses(registry, "first_byte")
        (backend,) = gw.app[backends_key]
        state = backend.describe()["state"]
    finally:
        await gw.stop()
        await up.stop()
    assert [r[:2] for r in results[:2]] == [(504, "upstream_timeout")] * 2
    assert all(0.28 < r[2] < 0.8 for r in results[:2]), results
    assert misses == 2
    assert state != "up"  # two misses in a row: out of rotation
    assert results[2][:2] == (503, "no_healthy_backend")


@pytest.mark.asyncio
async def test_a_models_own_deadline_overrides_the_default() -> None:
    up, gw, registry = await _gateway(
        _drip,
        {"total_s": 30, "models": {"llama-*": {"total_s": 5}, "deepseek-r1*": {"total_s": 0.6}}},
    )
    try:
        t0 = time.monotonic()
        async with (
            aiohttp.ClientSession() as http,
            http.post(gw.url + "/v1/completions", json=BODY) as r,
        ):
            status = r.status
        took = time.monotonic() - t0
    finally:
        await gw.stop()
        await up.stop()
    assert status == 504 and 0.55 < took < 1.0, (status, took)


@pytest.mark.asyncio
async def test_the_deadline_watch_fires_never_early_within_two_ticks_and_not_once_cancelled() -> (
    None
):
    watch = DeadlineWatch()
    ticking = asyncio.create_task(watch.run())
    loop = asyncio.get_running_loop()
    late: dict[str, float] = {}

    def file(name: str, after_s: float) -> Any:
        due = loop.time() + after_s
        return watch.at(due, lambda: late.setdefault(name, loop.time() - due))

    for after_s in (0.0, 0.01, 0.07, 0.2, 0.33):
        file(f"{after_s}", after_s)
    watch.cancel(file("cancelled", 0.1))
    await asyncio.sleep(0.6)
    ticking.cancel()
    assert sorted(late) == ["0.0", "0.01", "0.07", "0.2", "0.33"]
    assert all(0.0 <= s < 2 * TICK_S + 0.02 for s in late.values()), late
