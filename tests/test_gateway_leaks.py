"""What an upstream failure tells the client: no backend name, address or upstream text (a backend
may echo what it was sent, the gateway's own backend key included); the log keeps the details
under the request id. Real servers on loopback: header-echoing backends and a closed port."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.server.app import create_app
from gateway.server.config import parse
from tests.gateway_harness import MODEL, fake_upstream, serve

KEY = "sk-backend-secret-4711"
BODY = {"model": MODEL, "prompt": "hi", "max_tokens": 2}


def _echo(status: int):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        text = "I was sent: " + json.dumps(dict(request.headers))
        return web.Response(status=status, text=text)

    return handler


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _ask(urls: list[str]) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    config = parse(
        {
            "listen": "127.0.0.1:0",
            "backends": [
                {"name": f"secret-host-{i}", "url": u, "model": MODEL, "api_key_env": "BKEY"}
                for i, u in enumerate(urls)
            ],
            "health": {"interval_s": 30},
        },
        env={"BKEY": KEY},
    )
    gw = await serve(create_app(config, registry=CollectorRegistry()))
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(gw.url + "/v1/completions", json=BODY) as r,
        ):
            return r.status, await r.json(), r.headers["x-request-id"]
    finally:
        await gw.stop()


async def _ask_two(handler: Any) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    """_ask over two backends that answer completions with `handler`."""
    ups = [await fake_upstream(post_v1_completions=handler, get_health=_health) for _ in "ab"]
    try:
        return await _ask([u.url for u in ups])
    finally:
        for u in ups:
            await u.stop()


@pytest.mark.asyncio
async def test_a_5xx_from_echoing_backends_names_nothing_internal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cardinal.gateway"):
        status, body, rid = await _ask_two(_echo(500))
    text = json.dumps(body)
    assert status == 500 and body["error"]["code"] == "request_failed_upstream"
    for secret in (KEY, "secret-host", "127.0.0.1", "I was sent"):
        assert secret not in text, secret
    assert rid in body["error"]["message"]
    logged = [r.getMessage() for r in caplog.records if rid in r.getMessage()]
    assert logged and "secret-host-0" in logged[0] and "I was sent" in logged[0]


async def _hang_up(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.abort()  # the connection drops before any answer
    return web.Response()


@pytest.mark.asyncio
async def test_a_backend_that_hangs_up_is_not_named_to_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cardinal.gateway"):
        status, body, rid = await _ask_two(_hang_up)
    text = json.dumps(body)
    assert status == 502 and body["error"]["code"] == "upstream_failed", body
    assert "secret-host" not in text and "127.0.0.1" not in text and rid in text
    assert any("secret-host" in r.getMessage() for r in caplog.records if rid in r.getMessage())


@pytest.mark.asyncio
async def test_a_4xx_keeps_the_backends_words_but_not_the_gateways_key() -> None:
    up = await fake_upstream(post_v1_completions=_echo(400), get_health=_health)
    try:
        status, body, _ = await _ask([up.url])
    finally:
        await up.stop()
    message = body["error"]["message"]
    assert status == 400 and "I was sent" in message  # the client's own error, in its words
    assert KEY not in message and "[redacted]" in message
