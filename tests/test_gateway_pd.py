"""A disaggregated fleet behind the gateway, in SGLang's PD protocol: simulated prefill and decode
cards on loopback, each request sent to a prefill and a decode worker as a pair (bootstrap host,
port and room), the decode worker's stream relayed, failures on either side survived."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.server.config import ConfigError, parse
from tests.gateway_harness import MODEL, card_config, fake_upstream, fleet, start_card


def _pd_config(prefill: list[str], decode: list[str], **top: Any) -> Any:
    backends = [
        {"name": f"prefill-{i}", "url": u, "model": MODEL, "role": "prefill",
         "bootstrap_port": int(u.rsplit(":", 1)[1])}
        for i, u in enumerate(prefill)
    ] + [
        {"name": f"decode-{i}", "url": u, "model": MODEL, "role": "decode"}
        for i, u in enumerate(decode)
    ]  # fmt: skip
    data = {"listen": "127.0.0.1:0", "backends": backends, "health": {"interval_s": 0.2}, **top}
    return parse(data, env={})


async def _chat(url: str, *, max_tokens: int = 16) -> tuple[int, float, int]:
    """(status, seconds to the first content event, content events) of one streamed request."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello " * 200}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    t0 = time.monotonic()
    first, events = None, 0
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json=body) as r:
        if r.status != 200:
            return r.status, 0.0, 0
        async for line in r.content:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    events += 1
                    first = first if first is not None else time.monotonic() - t0
    return 200, first or 0.0, events


@pytest.mark.asyncio
async def test_a_request_goes_to_a_prefill_and_a_decode_worker_as_a_pair() -> None:
    seen: list[dict[str, Any]] = []
    prefill_card = await start_card(card_config(role="prefill"))
    decode = card_config(role="decode", kv_transfer_s_per_token=0.0002)

    async def spy(request: web.Request) -> web.StreamResponse:  # the prefill side, recorded
        body = await request.json()
        seen.append(body)
        async with (
            aiohttp.ClientSession() as s,
            s.post(prefill_card.url + "/v1/chat/completions", json=body) as r,
        ):
            return web.Response(body=await r.read(), status=r.status)

    spy_server = await fake_upstream(post_v1_chat_completions=spy)
    decode_card = await start_card(decode)
    port = int(prefill_card.url.rsplit(":", 1)[1])  # its rooms, on its own port
    cfg = _pd_config([spy_server.url], [decode_card.url])
    cfg = replace(cfg, backends=(replace(cfg.backends[0], bootstrap_port=port), cfg.backends[1]))
    try:
        async with fleet([], config=cfg) as g:
            status, ttft, events = await _chat(g.gateway.url, max_tokens=16)
            assert status == 200 and events == 16  # every token, from the decode worker
            [body] = seen
            assert body["bootstrap_host"] == "127.0.0.1"
            assert body["bootstrap_port"] == port
            assert 0 <= body["bootstrap_room"] < 2**63
            assert body["messages"][0]["content"].startswith("hello")
            # the first token waited for the prompt and its cache's trip (200 tokens x 0.2 ms)
            assert ttft >= 0.04
            ok = g.sample("gateway_requests_total", model=MODEL, backend="prefill-0", code="200")
            assert ok == 1
    finally:
        await spy_server.stop()
        await decode_card.stop()
        await prefill_card.stop()


@pytest.mark.asyncio
async def test_a_dead_prefill_worker_is_ejected_and_its_pair_retried() -> None:
    cards = [card_config(role="prefill"), card_config(role="prefill"), card_config(role="decode")]
    async with fleet(cards, config=None) as f:
        p0, p1, d = (c.url for c in f.cards)
        cfg = _pd_config([p0, p1], [d], max_attempts=3)
        await f.cards[0].stop()  # prefill-0 is gone before any request
        async with fleet([], config=cfg) as g:
            results = [await _chat(g.gateway.url, max_tokens=4) for _ in range(6)]
            assert all(r[0] == 200 for r in results), results
            assert g.sample("gateway_backend_up", backend="prefill-0") == 0
            assert g.sample(
                "gateway_requests_total", model=MODEL, backend="prefill-1", code="200"
            ) >= 5  # fmt: skip


@pytest.mark.asyncio
async def test_a_decode_worker_refuses_a_request_without_its_bootstrap() -> None:
    served = await start_card(card_config(role="decode"))
    try:
        async with aiohttp.ClientSession() as s:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(served.url + "/v1/chat/completions", json=body) as r:
                err = (await r.json())["error"]
                assert r.status == 400 and err["param"] == "bootstrap_room"
            body["bootstrap_host"], body["bootstrap_room"] = "127.0.0.1", 2**63
            async with s.post(served.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == "bootstrap_room"
    finally:
        await served.stop()


@pytest.mark.parametrize(
    ("backends", "field"),
    [
        ([{"role": "decode"}], "backends[0].role"),
        ([{"role": "prefill"}], "backends[0].role"),
        ([{"role": "both", "bootstrap_port": 8998}], "backends[0].bootstrap_port"),
        (
            [{"role": "prefill", "bootstrap_port": 70000}, {"role": "decode"}],
            "backends[0].bootstrap_port",
        ),
        ([{"role": "router"}], "backends[0].role"),
    ],  # fmt: skip
)
def test_pd_config_errors_name_the_field(backends: list[dict[str, Any]], field: str) -> None:
    data = {
        "listen": "127.0.0.1:0",
        "backends": [
            {"name": f"b{i}", "url": f"http://127.0.0.1:{9000 + i}", "model": MODEL, **b}
            for i, b in enumerate(backends)
        ],
    }
    with pytest.raises(ConfigError) as e:
        parse(data, env={})
    assert e.value.field == field
