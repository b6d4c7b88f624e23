"""One bad request must not take the fleet down, and bad input gets a 4xx: a request of death
among steady traffic, a corpus of malformed requests, backends that are all busy, and clients that
stop reading their streams. Real servers on loopback: the gateway, simulated cards, and tiny
aiohttp backends that misbehave on purpose."""

from __future__ import annotations

import asyncio
import codecs
import gzip
import json
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.server.app import backends_key
from gateway.server.config import ConfigError
from tests.gateway_harness import (
    MODEL,
    Fleet,
    card_config,
    fake_upstream,
    fleet,
    gateway_config,
    start_card,
)

EVENT = b'data: {"choices": [{"index": 0, "text": "hi", "finish_reason": null}]}\n\n'
DONE = b"data: [DONE]\n\n"
MODEL_BYTES = MODEL.encode()


def reached_backends(f: Fleet) -> float:
    """Answers the gateway got from backends, whatever their status."""
    return sum(
        s.value
        for m in f.registry.collect()
        if m.name == "gateway_requests"
        for s in m.samples
        if s.name == "gateway_requests_total"
    )


async def _stream(http: aiohttp.ClientSession, url: str, prompt: str) -> tuple[int, bool, Any]:
    """(status, whether the stream ended with [DONE], the response's headers and error)."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": True}
    async with http.post(url + "/v1/completions", json=body) as r:
        payload = await r.read()
        if r.status != 200:
            return r.status, False, (r.headers, json.loads(payload)["error"])
        return r.status, payload.endswith(DONE), (r.headers, None)


# -- 1. a request of death ----------------------------------------------------------------------


def poisoned_card(seen: list[str]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A backend that answers a bare 500 to any prompt holding "poison" (as the simulated card
    once did to a lone surrogate), and streams a short answer to everything else."""

    async def handler(request: web.Request) -> web.StreamResponse:
        prompt = (await request.json())["prompt"]
        seen.append(prompt)
        if "poison" in prompt:
            raise web.HTTPInternalServerError()
        await asyncio.sleep(0.02)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(EVENT * 4 + DONE)
        return resp

    return handler


@pytest.mark.asyncio
async def test_a_poison_request_every_second_ejects_no_backend() -> None:
    seen: list[str] = []
    ups = [await fake_upstream(post_v1_completions=poisoned_card(seen)) for _ in range(3)]
    # A long re-probe interval: an ejected backend would stay out for the rest of the run.
    config = gateway_config([u.url for u in ups], health={"interval_s": 5})
    innocent: list[tuple[int, bool, Any]] = []
    poison: list[tuple[int, bool, Any]] = []
    lowest_up = 3
    try:
        async with fleet([], config) as f, aiohttp.ClientSession() as http:
            backends = f.gateway.app[backends_key]
            loop = asyncio.get_running_loop()
            start = loop.time()

            async def watch() -> None:
                nonlocal lowest_up
                while True:
                    lowest_up = min(lowest_up, sum(b.up for b in backends))
                    await asyncio.sleep(0.01)

            async def send(i: int) -> None:
                await asyncio.sleep(max(0.0, start + i / 20 - loop.time()))
                if i % 20 == 10:  # one a second
                    poison.append(await _stream(http, f.gateway.url, f"poison {i}"))
                else:
                    innocent.append(await _stream(http, f.gateway.url, f"hello {i}"))

            watcher = asyncio.create_task(watch())
            await asyncio.gather(*(send(i) for i in range(20 * 6)))
            watcher.cancel()
            states = [b.describe()["state"] for b in backends]
    finally:
        for u in ups:
            await u.stop()
    ok = sum(status == 200 and done for status, done, _ in innocent)
    print(
        f"\npoison: {len(innocent)} innocent requests, {ok} served ({ok / len(innocent):.1%}); "
        f"{len(poison)} poison requests answered {Counter(p[0] for p in poison)}; "
        f"fewest backends up at any moment: {lowest_up} of 3"
    )
    assert ok / len(innocent) >= 0.99
    assert lowest_up == 3 and states == ["up"] * 3
    for status, _, (_, error) in poison:
        # tried on two backends, not a third, and answered with their status
        assert status == 500 and error["code"] == "request_failed_upstream"
        assert error["message"].startswith("2 backends failed this request alike")
    assert sum("poison" in p for p in seen) == 2 * len(poison)


@pytest.mark.asyncio
async def test_a_backend_failing_every_request_is_still_ejected() -> None:
    async def broken(request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPInternalServerError()

    bad = await fake_upstream(post_v1_completions=broken)
    good = await start_card()
    config = gateway_config(
        [bad.url, good.url],
        routing="round_robin",
        health={"interval_s": 30, "failure_threshold": 3},
    )
    try:
        async with fleet([], config) as f, aiohttp.ClientSession() as http:
            results = [await _stream(http, f.gateway.url, "hello") for _ in range(12)]
            retried = f.sample("gateway_retries_total", backend="card-0", reason="server_error")
            up = f.sample("gateway_backend_up", backend="card-0")
    finally:
        await bad.stop()
        await good.stop()
    assert all(status == 200 and done for status, done, _ in results)  # retried on the card
    assert (retried, up) == (3, 0)  # three failed answers in a row, then out


@pytest.mark.asyncio
async def test_the_simulated_card_answers_400_for_input_it_cannot_handle() -> None:
    card = await start_card()
    cases = [
        ("/v1/completions", b'{"model": "%s", "prompt": "a\\ud800b"}' % MODEL_BYTES, "prompt"),
        (
            "/v1/chat/completions",
            b'{"model": "%s", "messages": [{"role": "user", "content": '
            b'[{"type": "text", "text": 5}]}]}' % MODEL_BYTES,
            "messages[0].content[0].text",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "%s", "messages": [{"role": "user", "content": "\\udfff"}]}' % MODEL_BYTES,
            "messages[0].content",
        ),
        ("/v1/completions", json.dumps({"model": MODEL, "prompt": "x"}).encode("utf-16"), None),
    ]
    try:
        async with aiohttp.ClientSession() as http:
            for path, raw, param in cases:
                async with http.post(card.url + path, data=raw) as r:
                    error = (await r.json())["error"]
                    assert r.status == 400, (raw, error)
                    assert error["type"] == "BadRequestError" and error["param"] == param
    finally:
        await card.stop()


# -- 2. malformed requests ------------------------------------------------------------------------

VALID = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
VALID_BYTES = json.dumps(VALID).encode()
JSON = {"Content-Type": "application/json"}
# (what is wrong, headers, body, the status it must get)
REFUSED_BEFORE_ANY_BACKEND = [
    ("plain body sent as gzip", {**JSON, "Content-Encoding": "gzip"}, VALID_BYTES, 400),
    ("plain body sent as deflate", {**JSON, "Content-Encoding": "deflate"}, VALID_BYTES, 400),
    ("plain body sent as br", {**JSON, "Content-Encoding": "br"}, VALID_BYTES, 400),
    ("unknown encoding", {**JSON, "Content-Encoding": "foo"}, VALID_BYTES, 415),
    ("gzip twice", {**JSON, "Content-Encoding": "gzip, gzip"}, VALID_BYTES, 415),
    ("text/plain", {"Content-Type": "text/plain"}, VALID_BYTES, 415),
    ("a form", {"Content-Type": "application/x-www-form-urlencoded"}, VALID_BYTES, 415),
    ("multipart", {"Content-Type": "multipart/form-data; boundary=x"}, VALID_BYTES, 415),
    ("JSON in UTF-16", {"Content-Type": "application/json; charset=utf-16"}, VALID_BYTES, 415),
    ("UTF-8 BOM", JSON, codecs.BOM_UTF8 + VALID_BYTES, 400),
    ("UTF-16 BOM", JSON, json.dumps(VALID).encode("utf-16"), 400),
    ("UTF-16 BE BOM", JSON, codecs.BOM_UTF16_BE + json.dumps(VALID).encode("utf-16-be"), 400),
    ("UTF-32 BOM", JSON, json.dumps(VALID).encode("utf-32"), 400),
    ("UTF-16 without BOM", JSON, json.dumps(VALID).encode("utf-16-le"), 400),
    ("Latin-1 bytes", JSON, b'{"model": "%s", "prompt": "caf\xe9"}' % MODEL_BYTES, 400),
    ("lone surrogate", JSON, b'{"model": "%s", "prompt": "\\ud800"}' % MODEL_BYTES, 400),
    (
        "lone low surrogate in a chat message",
        JSON,
        b'{"model": "%s", "messages": [{"role": "user", "content": "a\\udc00"}]}' % MODEL_BYTES,
        400,
    ),
    (
        "lone surrogate in a content part",
        JSON,
        b'{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text", '
        b'"text": "\\udbff"}]}]}' % MODEL_BYTES,
        400,
    ),
    (
        "surrogate in `stop`",
        JSON,
        b'{"model": "%s", "prompt": "x", "stop": ["\\ud83d"]}' % MODEL_BYTES,
        400,
    ),
    ("surrogate in a key", JSON, b'{"model": "%s", "prompt": "", "\\ud800": 1}' % MODEL_BYTES, 400),
    ("temperature 1e400 (infinity)", JSON,
     b'{"model": "%s", "prompt": "x", "temperature": 1e400}' % MODEL_BYTES, 400),
    ("top_p -1e400", JSON, b'{"model": "%s", "prompt": "x", "top_p": -1e400}' % MODEL_BYTES, 400),
]  # fmt: skip
WRONG = [None, 0, -1, 2.5, 10**30, "", "x", "\ud83d\ude00", True, [], [1], ["a", 1], {}, {"a": 1}]
FIELDS = [
    "model", "prompt", "messages", "input", "max_tokens", "max_completion_tokens", "n", "stream",
    "stream_options", "temperature", "top_p", "presence_penalty", "frequency_penalty", "stop",
    "user", "logprobs", "top_logprobs", "seed", "logit_bias", "tools", "tool_choice",
    "response_format", "ignore_eos", "echo", "suffix", "best_of",
]  # fmt: skip
CHAT_BASE = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def field_corpus() -> list[tuple[str, dict[str, Any]]]:
    """Every field of both endpoints, and the parts of a chat message, given each wrong value."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path, base in (("/v1/completions", VALID), ("/v1/chat/completions", CHAT_BASE)):
        for name in FIELDS:
            out += [(path, {**base, name: value}) for value in WRONG]
    for value in WRONG:
        for message in (
            value,
            {"role": value, "content": "hi"},
            {"role": "user", "content": value},
            {"role": "user", "content": [value]},
            {"role": "user", "content": [{"type": value, "text": "hi"}]},
            {"role": "user", "content": [{"type": "text", "text": value}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": value}]},
        ):
            out.append(("/v1/chat/completions", {**CHAT_BASE, "messages": [message]}))
        stream = {"stream": True, "stream_options": {"include_usage": value}}
        out.append(("/v1/completions", {**VALID, **stream}))
    return out


@pytest.mark.asyncio
async def test_malformed_requests_get_4xx_and_never_reach_or_eject_a_backend() -> None:
    async with (
        fleet([card_config(), card_config()]) as f,
        aiohttp.ClientSession(auto_decompress=False) as http,
    ):
        url = f.gateway.url
        for why, headers, body, status in REFUSED_BEFORE_ANY_BACKEND:
            async with http.post(url + "/v1/completions", data=body, headers=headers) as r:
                error = (await r.json())["error"]
                assert r.status == status, (why, error)
                assert error["type"] == "invalid_request_error" and error["message"], why
        assert reached_backends(f) == 0
        # the real thing passes: gzip that is gzip, an emoji as its surrogate pair
        for headers, body in [
            ({**JSON, "Content-Encoding": "gzip"}, gzip.compress(VALID_BYTES)),
            ({"Content-Type": "application/json; charset=UTF-8"}, VALID_BYTES),
            (JSON, b'{"model": "%s", "prompt": "\\ud83d\\ude00"}' % MODEL_BYTES),
        ]:
            async with http.post(url + "/v1/completions", data=body, headers=headers) as r:
                assert r.status == 200, await r.text()
        statuses: Counter[int] = Counter()
        for path, body in field_corpus():
            async with http.post(url + path, json=body) as r:
                payload = await r.read()
                statuses[r.status] += 1
                assert r.status < 500, (body, payload[:300])
                if r.status >= 400:
                    assert json.loads(payload)["error"]["message"], (body, payload[:300])
        backends = [b.describe() for b in f.gateway.app[backends_key]]
    print(f"\nfield corpus: {sum(statuses.values())} requests, statuses {dict(statuses)}")
    assert statuses[200] > 50 and statuses[400] > 300
    assert [(b["state"], b["failed_answers"]) for b in backends] == [("up", 0)] * 2


# -- 4. busy backends ---------------------------------------------------------------------------


def busy(retry_after: str | None) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        headers = {"Retry-After": retry_after} if retry_after else {}
        body = {"error": {"message": "busy", "type": "rate_limit_error", "code": 429}}
        return web.json_response(body, status=429, headers=headers)

    return handler


@pytest.mark.asyncio
@pytest.mark.parametrize(("retry_after", "expected"), [(("7", "3"), "3"), ((None, None), "2")])
async def test_when_every_backend_is_busy_the_client_gets_429_with_retry_after(
    retry_after: tuple[str | None, str | None], expected: str
) -> None:
    ups = [await fake_upstream(post_v1_completions=busy(ra)) for ra in retry_after]
    config = gateway_config([u.url for u in ups], admission={"retry_after_s": 2})
    names = [b.name for b in config.backends]
    try:
        async with fleet([], config) as f, aiohttp.ClientSession() as http:
            status, _, (headers, error) = await _stream(http, f.gateway.url, "hello")
            up = [f.sample("gateway_backend_up", backend=f"card-{i}") for i in range(2)]
            rejected = f.sample("gateway_rejected_requests_total", reason="backends_busy")
            tried = [f.sample("gateway_retries_total", backend=b, reason="busy") for b in names]
    finally:
        for u in ups:
            await u.stop()
    assert (status, headers.get("Retry-After")) == (429, expected)
    assert error["type"] == "rate_limit_error" and error["code"] == "overloaded"
    assert tried == [1, 1] and up == [1, 1] and rejected == 1  # busy is not broken


# -- 5. slow readers ----------------------------------------------------------------------------


def endless(cut: list[int]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Streams 100 MB of events as fast as it may (a short answer to the prompt "short"); counts
    the streams whose reader went away before the end."""
    event = b'data: {"choices": [{"index": 0, "text": "' + b"x" * 1000 + b'"}]}\n\n'

    async def handler(request: web.Request) -> web.StreamResponse:
        short = (await request.json())["prompt"] == "short"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        done = False
        try:
            for _ in range(3 if short else 100_000):
                await resp.write(event)
            await resp.write(DONE)
            done = True
        finally:
            if not done:
                cut.append(1)
        return resp

    return handler


async def _slow_reader(url: str) -> socket.socket:
    """A client that sends a streaming request and then reads nothing, with a tiny receive
    buffer so the gateway's writes back up at once."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    body = json.dumps({"model": MODEL, "prompt": "long", "stream": True}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    await loop.sock_sendall(sock, head + body)
    return sock


async def _closed(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the server closed the connection (what it had sent, read and dropped)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            while await loop.sock_recv(sock, 1 << 20):
                pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.mark.asyncio
async def test_slow_readers_are_cut_after_the_send_timeout_and_their_slots_reused() -> None:
    cut: list[int] = []
    up = await fake_upstream(post_v1_completions=endless(cut))
    config = gateway_config(
        [up.url],
        max_inflight=3,
        server={"send_timeout_s": 0.5},
        admission={"queue_timeout_s": 20},
    )
    sockets: list[socket.socket] = []
    try:
        async with fleet([], config) as f, aiohttp.ClientSession() as http:
            [backend] = f.gateway.app[backends_key]
            sockets = [await _slow_reader(f.gateway.url) for _ in range(3)]
            deadline = time.monotonic() + 5
            while backend.inflight < 3:
                assert time.monotonic() < deadline, "the slow readers never took the slots"
                await asyncio.sleep(0.01)
            # every slot is held by a client that reads nothing; a normal one waits, then is served
            status, done, _ = await asyncio.wait_for(_stream(http, f.gateway.url, "short"), 15)
            deadline = time.monotonic() + 5
            while (len(cut) < 3 or backend.inflight) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            timeouts = f.sample("gateway_send_timeouts_total")
            cut_499 = f.sample("gateway_requests_total", model=MODEL, backend="card-0", code="499")
            closed = [await _closed(s, 5) for s in sockets]
            inflight = backend.inflight
    finally:
        for s in sockets:
            s.close()
        await up.stop()
    assert (status, done) == (200, True)
    assert (timeouts, cut_499) == (3, 3)
    assert closed == [True] * 3  # the slow clients were dropped
    assert len(cut) == 3 and inflight == 0  # their upstream requests were closed too


def test_the_new_fields_are_validated_naming_them() -> None:
    for top, field in [
        ({"server": {"send_timeout_s": 0}}, "server.send_timeout_s"),
        ({"server": {"send_timeout_s": "1m"}}, "server.send_timeout_s"),
        ({"health": {"failure_threshold": 0}}, "health.failure_threshold"),
        ({"health": {"failure_threshold": 2.5}}, "health.failure_threshold"),
    ]:
        with pytest.raises(ConfigError) as e:
            gateway_config(["http://127.0.0.1:1"], **top)
        assert e.value.field == field and f"`{field}`" in str(e.value)
    c = gateway_config(["http://127.0.0.1:1"])
    assert (c.server.send_timeout_s, c.health.failure_threshold) == (60.0, 5)


@pytest.mark.asyncio
async def test_the_send_watch_cuts_only_writes_pending_past_the_timeout() -> None:
    from gateway.server.sendwatch import SendWatch

    cuts: list[int] = []
    watch = SendWatch(lambda: 0.2, on_cut=lambda: cuts.append(1))

    class Transport:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    class Request:
        transport = Transport()

    class Resp:
        def __init__(self) -> None:
            self.gate = asyncio.Event()

        async def write(self, data: bytes) -> None:
            await self.gate.wait()
            if Request.transport.aborted:
                raise ConnectionResetError("Connection lost")

    stuck, quick = Resp(), Resp()
    quick.gate.set()
    await watch.write(Request(), quick, b"x")  # done at once: nothing to cut
    task = asyncio.create_task(watch.write(Request(), stuck, b"x"))
    await asyncio.sleep(0.05)
    assert watch.check() == 0  # pending, but not for the timeout yet
    await asyncio.sleep(0.2)
    assert watch.check() == 1 and Request.transport.aborted and cuts == [1]
    stuck.gate.set()
    with pytest.raises(TimeoutError):
        await task
    assert watch.check() == 0  # forgotten once settled
