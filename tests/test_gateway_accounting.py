"""Tokens charged to a key are the tokens its requests made the backend generate, on every path:
a stream whose card sends several tokens an event and no usage (the gateway asks the backend for
usage, and hides that event from a client that did not ask), a non-streamed request whose client
leaves, and an answer whose `usage` has kilobytes after it. Real servers on loopback: simulated
cards and a fake upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.server.app import create_app
from gateway.server.config import parse
from gateway.sim.server import CardConfig
from tests.gateway_harness import MODEL, Served, card_config, fake_upstream, serve, start_card

KEY = "sk-metered"
BURST = 100_000  # a big bucket that refills 1 token a second: the charge reads off it
PROMPT = "Tell me a story."


@asynccontextmanager
async def metered(url: str) -> AsyncIterator[tuple[Served, CollectorRegistry]]:
    config = parse(
        {
            "listen": "127.0.0.1:0",
            "backends": [{"name": "card", "url": url, "model": MODEL}],
            "health": {"interval_s": 30},
            "auth": {
                "keys": [
                    {
                        "name": "team",
                        "key_env": "TEAM_KEY",
                        "limits": {"tokens_per_minute": 60, "burst_tokens": BURST},
                    }
                ]
            },
        },
        env={"TEAM_KEY": KEY},
    )
    registry = CollectorRegistry()
    gw = await serve(create_app(config, registry=registry))
    try:
        yield gw, registry
    finally:
        await gw.stop()


async def probe(http: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    """(the key's tokens left before this probe, as its headers tell; what the probe costs, as
    its usage says): a one-token request."""
    await asyncio.sleep(0.05)  # the settlement runs after the answer
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1}
    async with http.post(url + "/v1/completions", json=body, headers=headers) as r:
        assert r.status == 200
        cost = (await r.json())["usage"]["total_tokens"]
        return int(r.headers["x-ratelimit-remaining-tokens"]), cost


async def charge_of(http: aiohttp.ClientSession, url: str, request: Any) -> int:
    """What awaiting `request()` charged the key, give or take the refill (a token a second)."""
    before, cost = await probe(http, url)
    await request()
    after, _ = await probe(http, url)
    return before - cost - after


async def card(tokens_per_event: int = 1, **kw: Any) -> Served:
    config: CardConfig = card_config(tokens_per_event=tokens_per_event, **kw)
    return await start_card(config)


async def ask(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[bytes]:
    """A completion with the key, answered 200: its `data:` lines (a whole answer has none)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with http.post(url + "/v1/completions", json=body, headers=headers) as r:
        assert r.status == 200
        return [ln.strip() async for ln in r.content if ln.startswith(b"data:")]


def served(registry: CollectorRegistry) -> float:
    labels = {"model": MODEL, "kind": "completion"}
    return registry.get_sample_value("gateway_tokens_total", labels) or 0.0


@pytest.mark.asyncio
@pytest.mark.parametrize("asks_usage", [False, True])
async def test_a_stream_is_charged_per_token_not_per_event(asks_usage: bool) -> None:
    c = await card(tokens_per_event=8)
    lines: list[bytes] = []
    body: dict[str, Any] = {
        "model": MODEL, "prompt": PROMPT, "max_tokens": 800, "ignore_eos": True, "stream": True,
    }  # fmt: skip
    if asks_usage:
        body["stream_options"] = {"include_usage": True}
    try:
        async with metered(c.url) as (gw, registry), aiohttp.ClientSession() as http:

            async def stream() -> None:
                lines.extend(await ask(http, gw.url, body))

            charge = await charge_of(http, gw.url, stream)
            counted = served(registry) - 2  # less the probes' token each
    finally:
        await c.stop()
    events = [json.loads(ln[6:]) for ln in lines if ln != b"data: [DONE]"]
    usage = [e["usage"] for e in events if e.get("usage")]
    assert lines[-1] == b"data: [DONE]"
    assert len(events) < 800 / 4  # several tokens an event
    print(f"    {len(events)} events, charged {charge} tokens")
    assert 800 < charge < 800 + 20  # 800 generated, the prompt's few, less the refill
    assert counted == 800
    if asks_usage:  # what the client asked for, as the card sent it
        assert usage and usage[-1]["completion_tokens"] == 800
    else:  # the usage the gateway asked for is not shown to a client that did not
        assert usage == [] and all(e["choices"] for e in events)


@pytest.mark.asyncio
async def test_a_whole_request_whose_client_leaves_is_charged_its_max_tokens() -> None:
    c = await card(speed_of="llama-3.1-70b", gpu="l4")  # slow: it is still generating
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 500, "ignore_eos": True}
    try:
        async with metered(c.url) as (gw, _), aiohttp.ClientSession() as http:

            async def leave() -> None:
                headers = {"Authorization": f"Bearer {KEY}"}
                call = asyncio.create_task(
                    http.post(gw.url + "/v1/completions", json=body, headers=headers)
                )
                await asyncio.sleep(0.5)
                call.cancel()  # the client leaves; the gateway cancels upstream
                await asyncio.gather(call, return_exceptions=True)
                await asyncio.sleep(0.2)

            charge = await charge_of(http, gw.url, leave)
    finally:
        await c.stop()
    # the most the backend may have generated for it, and its prompt's estimate
    assert 500 < charge < 500 + 10, charge


async def _usage_then_more(request: web.Request) -> web.Response:
    await request.read()
    answer = {
        "choices": [{"text": "x" * 100, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2500, "total_tokens": 2512},
        "system_fingerprint": "f" * 2048,  # 2 KB after the usage
    }
    return web.json_response(answer)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.mark.asyncio
async def test_usage_with_kilobytes_after_it_is_charged() -> None:
    up = await fake_upstream(post_v1_completions=_usage_then_more, get_health=_health)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4000}
    try:
        async with metered(up.url) as (gw, registry), aiohttp.ClientSession() as http:

            async def whole() -> None:
                await ask(http, gw.url, body)

            charge = await charge_of(http, gw.url, whole)
            counted = served(registry) / 3  # the probes' answers say the same
    finally:
        await up.stop()
    assert 2512 - 2 <= charge <= 2512, charge  # less the refill
    assert counted == 2500
