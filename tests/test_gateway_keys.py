"""Client keys and per-key limits: 401s and 429s in OpenAI's shape with its rate-limit headers,
in memory and in a real Redis, and what happens when Redis goes away."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.server.app import create_app
from gateway.server.config import ConfigError, load, parse
from gateway.server.limits import duration
from gateway.sim.faults import Faults
from gateway.sim.server import CardConfig
from tests.gateway_harness import MODEL, Fleet, card_config, fake_upstream, fleet, serve, start_card
from tests.process_harness import needs_redis, redis_server

ENV = {"ADMIN_KEY": "admin-secret", "TEAM_A_KEY": "sk-team-a", "TEAM_B_KEY": "sk-team-b"}
SHA_C = hashlib.sha256(b"sk-team-c").hexdigest()
BODY = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": 4}


def config(urls: list[str], *, key_limits: dict[str, Any] | None = None, **top: Any) -> Any:
    data = {
        "listen": "127.0.0.1:0",
        "backends": [{"name": f"card-{i}", "url": u, "model": MODEL} for i, u in enumerate(urls)],
        "health": {"interval_s": 0.2},
        "admin": {"key_env": "ADMIN_KEY"},
        "auth": {
            "keys": [
                {"name": "team-a", "key_env": "TEAM_A_KEY", "limits": key_limits or {}},
                {"name": "team-b", "key_env": "TEAM_B_KEY"},
                {"name": "team-c", "sha256": SHA_C},
            ]
        },
        **top,
    }
    return parse(data, env=ENV)


@asynccontextmanager
async def keyed(cards: Sequence[CardConfig], **kw: Any) -> AsyncIterator[Fleet]:
    """Cards, and a gateway over them with the three keys (`kw` goes to `config`)."""
    from prometheus_client import CollectorRegistry

    served = [await start_card(c) for c in cards]
    registry = CollectorRegistry()
    gw = await serve(create_app(config([s.url for s in served], **kw), registry=registry))
    try:
        yield Fleet(gateway=gw, cards=served, registry=registry)
    finally:
        await gw.stop()
        for s in served:
            await s.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.asyncio
async def test_keys_401_in_openai_shape_and_never_forwarded_or_logged(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str | None] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"choices": [{"text": "hi"}], "usage": {"completion_tokens": 1}})

    fake = await fake_upstream(post_v1_completions=upstream)
    caplog.set_level(logging.DEBUG)
    async with fleet([], config([fake.url])) as f:
        url = f.gateway.url
        for headers, want in [
            ({}, "didn't provide an API key"),
            (bearer("sk-wrong"), "Incorrect API key"),
            ({"Authorization": "Basic sk-team-a"}, "didn't provide"),
            (bearer("sk-team-a "[:-1] + "x"), "Incorrect API key"),
        ]:
            async with http.post(url + "/v1/completions", json=BODY, headers=headers) as r:
                error = (await r.json())["error"]
                assert r.status == 401
                assert error["type"] == "authentication_error"
                assert error["code"] == "invalid_api_key" and want in error["message"]
        for key in ("sk-team-a", "sk-team-b", "sk-team-c"):
            async with http.post(url + "/v1/completions", json=BODY, headers=bearer(key)) as r:
                assert r.status == 200, await r.text()
        async with http.get(url + "/v1/models") as r:
            assert r.status == 401
        async with http.get(url + "/v1/models", headers=bearer("sk-team-c")) as r:
            assert r.status == 200
    await fake.stop()
    assert seen == [None, None, None]  # the client's key never reaches a backend
    assert not any("sk-team" in rec.getMessage() for rec in caplog.records)


@pytest.mark.asyncio
async def test_admin_endpoints_need_the_admin_key(http: aiohttp.ClientSession) -> None:
    async with keyed([card_config()]) as f:
        for path, method in [("/admin/backends", "GET"), ("/admin/reload", "POST")]:
            for headers, status in [({}, 401), (bearer("sk-team-a"), 401)]:
                async with http.request(method, f.gateway.url + path, headers=headers) as r:
                    assert r.status == status
        async with http.get(f.gateway.url + "/admin/backends", headers=bearer("admin-secret")) as r:
            assert r.status == 200 and (await r.json())["limits_store"] == "local"


def test_key_config_errors_name_the_field(tmp_path: Path) -> None:
    base = {"listen": "127.0.0.1:0", "backends": [{"url": "http://a:1", "model": "m"}]}
    cases = [
        ({"keys": [{"name": "a", "key_env": "NOPE"}]}, "auth.keys[0].key_env"),
        ({"keys": [{"name": "a", "sha256": "abc"}]}, "auth.keys[0].sha256"),
        ({"keys": [{"name": "a"}]}, "auth.keys[0]"),
        (
            {"keys": [{"name": "a", "sha256": SHA_C, "limits": {"rpm": 1}}]},
            "auth.keys[0].limits.rpm",
        ),
        (
            {"keys": [{"name": "a", "sha256": SHA_C, "limits": {"max_concurrent": 0}}]},
            "auth.keys[0].limits.max_concurrent",
        ),
        (
            {"keys": [{"name": "a", "sha256": SHA_C}, {"name": "b", "sha256": SHA_C}]},
            "auth.keys[1]",
        ),
    ]
    for auth, field in cases:
        with pytest.raises(ConfigError) as e:
            parse({**base, "auth": auth}, env={})
        assert e.value.field == field, e.value
    with pytest.raises(ConfigError) as e:
        parse({**base, "limits": {"redis_url": "http://x"}}, env={})
    assert e.value.field == "limits.redis_url"
    # a keys file holds digests (and limits), read through the CLI's reader
    files = {"keys.yaml": f"- {{name: c, sha256: {SHA_C}, limits: {{max_concurrent: 2}}}}\n"}
    text = "backends: [{url: 'http://a:1', model: m}]\nauth: {keys_file: keys.yaml}\n"
    cfg = load(text, env={}, read=files.__getitem__)
    assert cfg.auth.keys[0].name == "c" and cfg.auth.keys[0].limits.max_concurrent == 2
    with pytest.raises(ConfigError) as e:
        load(
            text.replace("keys.yaml", "gone.yaml"),
            env={},
            read=lambda p: (tmp_path / p).read_text(),
        )
    assert e.value.field == "auth.keys_file"
    files["keys.yaml"] = "- {name: c, key_env: TEAM_A_KEY}\n"
    with pytest.raises(ConfigError) as e:
        load(text, env=ENV, read=files.__getitem__)
    assert e.value.field == "auth.keys_file[0].key_env"  # secrets stay out of key files


def test_reset_durations_as_openai_writes_them() -> None:
    assert [duration(s) for s in (0.02, 0.0, 1.5, 59.4, 360, 61.4)] == [
        "20ms", "0ms", "1.5s", "59.4s", "6m0s", "1m1s",
    ]  # fmt: skip


async def post(
    http: aiohttp.ClientSession, f: Fleet, key: str = "sk-team-a", **body: Any
) -> tuple[int, Any, str]:
    async with http.post(
        f.gateway.url + "/v1/completions", json={**BODY, **body}, headers=bearer(key)
    ) as r:
        return r.status, r.headers, await r.text()


@pytest.mark.asyncio
async def test_requests_per_minute_429_with_retry_after_and_openai_headers(
    http: aiohttp.ClientSession,
) -> None:
    limits = {"requests_per_minute": 60, "burst_requests": 3}
    async with keyed([card_config()], key_limits=limits) as f:
        answers = [await post(http, f) for _ in range(4)]
        assert [s for s, _, _ in answers] == [200, 200, 200, 429]
        _, h, _ = answers[0]
        assert h["x-ratelimit-limit-requests"] == "60"
        assert h["x-ratelimit-remaining-requests"] == "2"
        assert h["x-ratelimit-reset-requests"].endswith("s")
        status, h, text = answers[3]
        assert h["Retry-After"] == "1" and h["x-ratelimit-remaining-requests"] == "0"
        assert '"code": "rate_limit_exceeded"' in text and "60 requests per minute" in text
        assert (await post(http, f, key="sk-team-b"))[0] == 200  # another key, its own limits
        await asyncio.sleep(1.05)  # one request a second refills
        assert (await post(http, f))[0] == 200
        assert f.sample("gateway_rejected_requests_total", reason="key_requests") == 1


@pytest.mark.asyncio
async def test_a_key_over_its_limit_is_refused_before_its_body_is_read(
    http: aiohttp.ClientSession,
) -> None:
    """Invalid requests count against the key's request budget, and once it is spent the 429
    comes back while the client has sent only its headers: the body (announced as 8 MB) is
    never read, let alone parsed."""
    limits = {"requests_per_minute": 6, "burst_requests": 2}
    async with keyed([card_config()], key_limits=limits) as f:
        url = f.gateway.url + "/v1/completions"
        for _ in range(2):
            async with http.post(url, data=b"{not json", headers=bearer("sk-team-a")) as r:
                assert r.status == 400
        host, port = f.gateway.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer sk-team-a\r\nContent-Length: 8000000\r\n\r\n{"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 429"), status_line
        assert f.sample("gateway_rejected_requests_total", reason="key_requests") == 1


@pytest.mark.asyncio
async def test_tokens_per_minute_settled_when_the_stream_ends(
    http: aiohttp.ClientSession,
) -> None:
    limits = {"tokens_per_minute": 600, "burst_tokens": 40}
    async with keyed([card_config()], key_limits=limits) as f:
        # a stream with no usage block: 30 counted tokens and the prompt estimated
        status, h, _ = await post(http, f, stream=True, max_tokens=30, ignore_eos=True)
        assert status == 200 and h["x-ratelimit-remaining-tokens"] == "40"
        status, h, _ = await post(http, f, max_tokens=30, ignore_eos=True)
        assert status == 200 and int(h["x-ratelimit-remaining-tokens"]) < 10
        await asyncio.sleep(0.05)  # the settlement runs after the answer
        status, h, text = await post(http, f)
        assert status == 429 and "600 tokens per minute" in text, text
        assert int(h["Retry-After"]) >= 1 and h["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.asyncio
async def test_concurrent_requests_per_key(http: aiohttp.ClientSession) -> None:
    slow = card_config(faults=Faults(spike_rate=1.0, spike_s=0.5))
    async with keyed([slow], key_limits={"max_concurrent": 2}) as f:
        answers = await asyncio.gather(*(post(http, f) for _ in range(3)))
        assert sorted(s for s, _, _ in answers) == [200, 200, 429]
        assert (await post(http, f))[0] == 200  # the slots came back
        assert f.sample("gateway_rejected_requests_total", reason="key_concurrent") == 1


@needs_redis
@pytest.mark.asyncio
async def test_limits_in_redis_and_local_while_redis_is_down(
    http: aiohttp.ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"requests_per_minute": 60, "burst_requests": 3}
    with redis_server(tmp_path) as redis:
        top = {"limits": {"redis_url": redis.url, "redis_retry_s": 0.3}}
        async with (
            keyed([card_config()], key_limits=limits, **top) as f,
            keyed([card_config()], key_limits=limits, **top) as g,
        ):
            # two gateways, one bucket: the third request through either is the last
            statuses = [(await post(http, x))[0] for x in (f, g, f, g)]
            assert statuses == [200, 200, 200, 429]
            assert f.sample("gateway_limits_backend", store="redis") == 1
            redis.stop()
            caplog.set_level(logging.WARNING)
            statuses = [(await post(http, f))[0] for _ in range(4)]
            assert statuses == [200, 200, 200, 429]  # local limits, a fresh bucket
            assert f.sample("gateway_limits_backend", store="local") == 1
            assert f.sample("gateway_redis_errors_total") >= 1
            assert any("Redis unreachable" in r.getMessage() for r in caplog.records)
            redis.start()  # an empty Redis: the shared bucket starts full again
            await asyncio.sleep(0.4)
            assert (await post(http, f))[0] == 200
            assert f.sample("gateway_limits_backend", store="redis") == 1
            assert any("Redis is back" in r.getMessage() for r in caplog.records)
