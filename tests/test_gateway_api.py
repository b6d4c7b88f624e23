"""The gateway's API over simulated cards and plain upstreams on loopback, with the OpenAI SDK,
litellm and raw HTTP as clients."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import openai
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.server.config import parse
from gateway.sim.faults import Faults
from tests.gateway_harness import (
    MODEL,
    Fleet,
    card_config,
    fake_upstream,
    fleet,
    gateway_config,
    start_card,
)

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]


@pytest_asyncio.fixture
async def two() -> AsyncIterator[Fleet]:
    async with fleet([card_config(), card_config()], admin={"key_env": "ADMIN_KEY"}) as f:
        yield f


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.asyncio
async def test_openai_sdk_chat_and_completions_both_modes(two: Fleet) -> None:
    async with openai.AsyncOpenAI(base_url=two.gateway.url + "/v1", api_key="client") as c:
        whole = await c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6)
        assert whole.choices[0].message.content and whole.usage is not None
        assert whole.usage.completion_tokens == 6
        stream = await c.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [ch async for ch in stream]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == whole.choices[0].message.content
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        done = await c.completions.create(model=MODEL, prompt="Once upon", max_tokens=4)
        parts = await c.completions.create(
            model=MODEL, prompt="Once upon", max_tokens=4, stream=True
        )
        assert "".join([p.choices[0].text async for p in parts]) == done.choices[0].text
    tokens = two.sample("gateway_tokens_total", model=MODEL, kind="completion")
    assert tokens == 6 + 6 + 4 + 4
    assert two.sample("gateway_time_to_first_token_seconds_count", model=MODEL) == 2
    assert two.sample("gateway_inter_token_latency_seconds_count", model=MODEL) == 5 + 3
    assert sum(two.served()) == 4


@pytest.mark.asyncio
async def test_litellm_as_a_client(two: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    kw = {"model": f"openai/{MODEL}", "api_base": two.gateway.url + "/v1", "api_key": "x"}
    r = await litellm.acompletion(messages=MESSAGES, max_tokens=5, **kw)
    assert r.choices[0].message.content and r.usage.completion_tokens == 5
    stream = await litellm.acompletion(messages=MESSAGES, max_tokens=5, stream=True, **kw)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == r.choices[0].message.content


@pytest.mark.asyncio
async def test_models_health_ready_and_admin(two: Fleet, http: aiohttp.ClientSession) -> None:
    url = two.gateway.url
    async with http.get(url + "/v1/models") as r:
        assert [m["id"] for m in (await r.json())["data"]] == [MODEL]
    async with http.get(url + "/healthz") as r:
        assert r.status == 200
    async with http.get(url + "/health") as r:  # as vLLM answers it: guidellm's first check
        assert r.status == 200 and await r.read() == b""
    async with http.get(url + "/readyz") as r:
        assert r.status == 200 and (await r.json())["backends_up"] == ["card-0", "card-1"]
    async with http.get(url + "/admin/backends") as r:
        assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"
    headers = {"Authorization": "Bearer secret"}
    async with http.get(url + "/admin/backends", headers=headers) as r:
        body = await r.json()
    assert [(b["name"], b["state"], b["inflight"]) for b in body["backends"]] == [
        ("card-0", "up", 0),
        ("card-1", "up", 0),
    ]
    assert body["policy"] == "least_outstanding" and body["backends"][0]["max_inflight"] == 32
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    assert 'gateway_backend_up{backend="card-0"} 1.0' in text
    assert "gateway_queue_depth 0.0" in text


@pytest.mark.asyncio
async def test_errors_are_openai_shaped_with_a_request_id(http: aiohttp.ClientSession) -> None:
    async with fleet([card_config()], max_body_bytes=2048) as f:
        url = f.gateway.url + "/v1/chat/completions"
        cases = [
            (b"{not json", 400, None),
            (b"[1, 2]", 400, None),
            (json.dumps({"messages": MESSAGES}).encode(), 400, "model"),
            (json.dumps({"model": MODEL, "stream": "yes"}).encode(), 400, "stream"),
            (json.dumps({"model": "gpt-5", "messages": MESSAGES}).encode(), 404, "model"),
            (json.dumps({"model": MODEL, "prompt": "x" * 4000}).encode(), 413, None),
        ]
        for body, status, param in cases:
            async with http.post(url, data=body) as r:
                error = (await r.json())["error"]
                assert r.status == status, error
                assert set(error) == {"message", "type", "param", "code"}
                assert error["param"] == param and r.headers["x-request-id"]
        async with http.get(f.gateway.url + "/v2/nothing", headers={"x-request-id": "abc-1"}) as r:
            assert r.status == 404 and r.headers["x-request-id"] == "abc-1"
            assert (await r.json())["error"]["code"] == "not_found"
        # the backend's own 400 passes through as it is
        bad = {"model": MODEL, "messages": MESSAGES, "max_tokens": -1}
        async with http.post(url, json=bad) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "max_tokens"


@pytest.mark.asyncio
async def test_embeddings_use_the_gateways_own_backend_key(
    http: aiohttp.ClientSession,
) -> None:
    seen: list[dict[str, str]] = []

    async def embed(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        body = await request.json()
        usage = {"prompt_tokens": 3, "total_tokens": 3}
        data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    up = await fake_upstream(post_v1_embeddings=embed)
    backend = {"url": up.url, "model": "embedder", "api_key_env": "EMBED_KEY"}
    config = parse({"listen": "127.0.0.1:0", "backends": [backend]}, env={"EMBED_KEY": "sk-up"})
    async with fleet([], config=config) as f:
        async with openai.AsyncOpenAI(base_url=f.gateway.url + "/v1", api_key="sk-client") as c:
            r = await c.embeddings.create(model="embedder", input="hello")
        assert r.data[0].embedding == [0.1, 0.2]
        assert f.sample("gateway_tokens_total", model="embedder", kind="prompt") == 3
    await up.stop()
    assert seen[0]["authorization"] == "Bearer sk-up"  # never the client's key
    assert seen[0]["x-request-id"]


@pytest.mark.asyncio
async def test_stream_is_relayed_chunk_by_chunk(http: aiohttp.ClientSession) -> None:
    release = asyncio.Event()

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        event = {"choices": [{"index": 0, "delta": {"content": "one"}}]}
        await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await release.wait()  # the second event only after the client saw the first
        await resp.write(b"data: [DONE]\n\n")
        return resp

    up = await fake_upstream(post_v1_chat_completions=slow_stream)
    config = gateway_config([up.url])
    async with fleet([], config=config) as f:
        body = {"model": MODEL, "messages": MESSAGES, "stream": True}
        async with http.post(f.gateway.url + "/v1/chat/completions", json=body) as r:
            assert r.headers["X-Accel-Buffering"] == "no"
            assert r.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), timeout=2)
            assert b'"one"' in first
            release.set()
            assert (await r.content.read()).strip() == b"data: [DONE]"
    await up.stop()


@pytest.mark.asyncio
async def test_client_disconnect_cancels_the_upstream_request(
    http: aiohttp.ClientSession,
) -> None:
    cancelled = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b'data: {"choices": [{"index": 0, "text": "x"}]}\n\n')
                await asyncio.sleep(0.01)
        except (asyncio.CancelledError, ConnectionResetError):
            cancelled.set()
            raise

    up = await fake_upstream(post_v1_completions=endless)
    async with fleet([], config=gateway_config([up.url])) as f:
        body = {"model": MODEL, "prompt": "hi", "stream": True}
        async with http.post(f.gateway.url + "/v1/completions", json=body) as r:
            await r.content.readuntil(b"\n\n")
            r.close()  # the client goes away mid-stream
        await asyncio.wait_for(cancelled.wait(), timeout=3)
        for _ in range(50):
            if f.sample("gateway_requests_total", model=MODEL, backend="card-0", code="499"):
                break
            await asyncio.sleep(0.02)
        assert f.sample("gateway_inflight_requests", backend="card-0") == 0
        assert f.sample("gateway_requests_total", model=MODEL, backend="card-0", code="499") == 1
    await up.stop()


@pytest.mark.asyncio
async def test_a_client_gone_before_the_headers_is_a_499_not_an_error(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The client leaves while the backend thinks; the gateway's headers then meet a closed
    transport: a disconnect (499), no traceback."""

    async def slow_first_token(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.4)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "text": "x"}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp

    up = await fake_upstream(post_v1_completions=slow_first_token)
    async with fleet([], config=gateway_config([up.url])) as f:
        body = {"model": MODEL, "prompt": "hi", "stream": True}
        with caplog.at_level(logging.ERROR, logger="cardinal.gateway"):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    async with http.post(f.gateway.url + "/v1/completions", json=body) as r:
                        await r.read()
            for _ in range(60):
                if f.sample("gateway_requests_total", model=MODEL, backend="card-0", code="499"):
                    break
                await asyncio.sleep(0.02)
        await asyncio.sleep(1)
        print(
            [
                (m.name, s.labels, s.value)
                for m in f.registry.collect()
                for s in m.samples
                if "requests" in s.name
            ]
        )
        assert f.sample("gateway_requests_total", model=MODEL, backend="card-0", code="499") == 1
        assert f.sample("gateway_inflight_requests", backend="card-0") == 0
        assert not [r for r in caplog.records if r.name == "cardinal.gateway"], caplog.text
    await up.stop()


@pytest.mark.asyncio
async def test_failure_before_the_first_byte_is_retried_elsewhere(
    http: aiohttp.ClientSession,
) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        request.transport.abort()  # connection reset before any response byte
        return web.Response()

    up = await fake_upstream(post_v1_chat_completions=broken)
    served = await start_card()
    config = gateway_config([up.url, served.url], routing="round_robin")
    async with fleet([], config=config) as f:
        async with openai.AsyncOpenAI(base_url=f.gateway.url + "/v1", api_key="x") as c:
            for stream in (False, True):
                r = await c.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=3, stream=stream
                )
                if stream:
                    assert [ch async for ch in r]  # type: ignore[union-attr]
        assert f.sample("gateway_retries_total", backend="card-0", reason="disconnect") == 1
        async with http.get(f.gateway.url + "/readyz") as r:
            assert (await r.json())["backends_up"] == ["card-1"]  # ejected at once
    await up.stop()
    await served.stop()


@pytest.mark.asyncio
async def test_health_is_503_while_no_backend_is_in_rotation(http: aiohttp.ClientSession) -> None:
    served = await start_card()
    async with fleet([], config=gateway_config([served.url])) as f:
        async with http.get(f.gateway.url + "/health") as r:
            before = r.status
        await served.stop()  # its prober finds it gone
        status, body = 0, {}
        for _ in range(60):
            async with http.get(f.gateway.url + "/health") as r:
                status, body = r.status, await r.json() if r.status != 200 else {}
            if status == 503:
                break
            await asyncio.sleep(0.05)
    assert before == 200
    assert status == 503 and body["error"]["code"] == "no_healthy_backend", body
    assert "card-0" not in json.dumps(body)  # it names no backend


@pytest.mark.asyncio
async def test_a_loading_backend_is_warming_then_admitted(http: aiohttp.ClientSession) -> None:
    cards = [card_config(), replace(card_config(), faults=Faults(loading_s=0.8))]
    async with fleet(cards, admin={"key_env": "ADMIN_KEY"}) as f:
        headers = {"Authorization": "Bearer secret"}
        state = ""
        for _ in range(20):
            async with http.get(f.gateway.url + "/admin/backends", headers=headers) as r:
                state = (await r.json())["backends"][1]["state"]
            if state == "warming":
                break
            await asyncio.sleep(0.05)
        assert state == "warming"  # not "down": it answered 503 Loading
        async with openai.AsyncOpenAI(base_url=f.gateway.url + "/v1", api_key="x") as c:
            for _ in range(4):
                await c.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert f.served() == [4, 0]
        deadline = time.monotonic() + 3
        while f.sample("gateway_backend_up", backend="card-1") != 1:
            assert time.monotonic() < deadline, "the warmed-up card was never admitted"
            await asyncio.sleep(0.05)
