"""Request hygiene: body size, JSON and field validation naming the field, slow clients cut by the
header and body timeouts, and the cap on open connections."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.gateway_harness import MODEL, Fleet, card_config, fleet

SERVER = {"header_timeout_s": 0.5, "body_timeout_s": 0.5, "max_connections": 8}


@pytest_asyncio.fixture
async def gw() -> AsyncIterator[Fleet]:
    async with fleet([card_config()], server=SERVER, max_body_bytes=4096) as f:
        yield f


def _address(f: Fleet) -> tuple[str, int]:
    host, port = f.gateway.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


FIELD_CASES = [
    ("/v1/chat/completions", {"model": MODEL}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": ["hi"]}, "messages[0]"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": 3}]},
        "messages[0].content",
    ),
    ("/v1/completions", {"model": MODEL}, "prompt"),
    ("/v1/completions", {"model": 7, "prompt": "x"}, "model"),
    ("/v1/completions", {"prompt": "x"}, "model"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "9"}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2.5}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": 1}, "stream"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 2}, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 0}, "n"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": [1]}, "stop"),
    ("/v1/embeddings", {"model": MODEL}, "input"),
]


@pytest.mark.asyncio
async def test_fields_are_validated_naming_the_field(gw: Fleet) -> None:
    async with aiohttp.ClientSession() as http:
        for path, body, param in FIELD_CASES:
            async with http.post(gw.gateway.url + path, json=body) as r:
                error = (await r.json())["error"]
                assert (r.status, error["param"]) == (400, param), (body, error)
                assert error["type"] == "invalid_request_error"
                assert f"`{param}`" in error["message"]
        for raw, why in [
            (b'{"model": "m", "prompt": "x", "temperature": NaN}', "NaN is not a JSON number"),
            (b"[" * 1900 + b"]" * 1900, "nested too deeply"),  # past Python's recursion limit
            (b"\xff\xfe{", "not valid JSON"),
            (b'"just a string"', "must be a JSON object"),
        ]:
            async with http.post(gw.gateway.url + "/v1/completions", data=raw) as r:
                assert r.status == 400 and why in (await r.text()), raw[:40]
        async with http.post(
            gw.gateway.url + "/v1/completions", json={"model": MODEL, "prompt": "x" * 5000}
        ) as r:
            assert r.status == 413 and (await r.json())["error"]["code"] == "request_too_large"
    assert sum(gw.served()) == 0  # none of it reached a card


@pytest.mark.asyncio
async def test_a_client_that_sends_its_head_slowly_is_cut(gw: Fleet) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(*_address(gw))
    t0 = loop.time()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    closed_after = None
    for _ in range(40):  # a header byte every 0.1 s: never a whole head
        try:
            writer.write(b"X")
            await writer.drain()
        except ConnectionError:
            pass
        try:
            if await asyncio.wait_for(reader.read(100), timeout=0.1) == b"":
                closed_after = loop.time() - t0
                break
        except TimeoutError:
            continue
        except ConnectionError:
            closed_after = loop.time() - t0
            break
    writer.close()
    assert closed_after is not None and closed_after < 2.0


@pytest.mark.asyncio
async def test_a_client_that_sends_its_body_slowly_gets_408(gw: Fleet) -> None:
    reader, writer = await asyncio.open_connection(*_address(gw))
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model":'
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), timeout=5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head[:200]
    assert b'"request_timeout"' in head


@pytest.mark.asyncio
async def test_connections_over_the_cap_get_503_and_are_closed(gw: Fleet) -> None:
    host, port = _address(gw)
    idle = [socket.create_connection((host, port)) for _ in range(SERVER["max_connections"])]
    await asyncio.sleep(0.1)
    try:
        extra = socket.create_connection((host, port), timeout=5)
        extra.settimeout(5)
        answer = await asyncio.to_thread(extra.recv, 4096)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "too_many_connections"
        assert gw.sample("gateway_refused_connections_total", reason="total") == 1
        assert gw.sample("gateway_open_connections") == SERVER["max_connections"]
    finally:
        for s in idle:
            s.close()
    await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as http, http.get(gw.gateway.url + "/healthz") as r:
        assert r.status == 200  # room again once they closed
