"""Connections and the operations endpoints: one client address cannot take every connection,
scrapes and health checks keep an address of their own (`metrics.listen`) outside the caps and
open through a drain, and `metrics.key_env` closes /metrics and /readyz to strangers. Real
servers on loopback; the drain case on a `cardinal serve` process."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml

from tests.gateway_harness import MODEL, Fleet, card_config, fleet
from tests.process_harness import free_port, serve_gateway
from tests.test_gateway_supervision import _slow_stream, _stream

PER_CLIENT = 4
TOTAL = 12
KEY = "secret"  # the harness sets ADMIN_KEY to it


@pytest_asyncio.fixture
async def gw() -> AsyncIterator[tuple[Fleet, str]]:
    ops = f"127.0.0.1:{free_port()}"
    server = {"max_connections": TOTAL, "max_connections_per_client": PER_CLIENT}
    async with fleet(
        [card_config()], server=server, metrics={"listen": ops, "key_env": "ADMIN_KEY"}
    ) as f:
        yield f, "http://" + ops


def _connect(url: str, source: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))


def _get(sock: socket.socket, path: str, headers: str = "") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    return sock.recv(65536)


async def _scrape(url: str, key: str | None = KEY) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        return r.status, await r.text()


def _sample(text: str, line_start: str) -> float:
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(line_start))


@pytest.mark.asyncio
async def test_one_address_cannot_take_every_connection(gw: tuple[Fleet, str]) -> None:
    f, ops = gw
    url = f.gateway.url
    held = [_connect(url, "127.0.0.1") for _ in range(PER_CLIENT)]
    try:
        await asyncio.sleep(0.1)
        extra = _connect(url, "127.0.0.1")
        refused = await asyncio.to_thread(extra.recv, 4096)
        extra.close()
        other = _connect(url, "127.0.0.2")  # another client still gets in
        answer = await asyncio.to_thread(_get, other, "/healthz")
        other.close()
        _, text = await _scrape(ops + "/metrics")
    finally:
        for s in held:
            s.close()
    assert refused.startswith(b"HTTP/1.1 503"), refused
    body = json.loads(refused.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "too_many_connections"
    assert "this address" in body["error"]["message"]
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert _sample(text, 'gateway_refused_connections_total{reason="per_client"}') == 1


@pytest.mark.asyncio
async def test_scrapes_and_health_checks_get_in_when_the_api_is_full(
    gw: tuple[Fleet, str],
) -> None:
    f, ops = gw
    url = f.gateway.url
    sources = [f"127.0.0.{2 + i // PER_CLIENT}" for i in range(TOTAL)]
    held = [_connect(url, s) for s in sources]  # every connection the API allows
    try:
        await asyncio.sleep(0.1)
        extra = _connect(url, "127.0.0.9")
        refused = await asyncio.to_thread(extra.recv, 4096)
        extra.close()
        scrapes = [await _scrape(ops + "/metrics") for _ in range(20)]
        ready = await _scrape(ops + "/readyz")
        health = await _scrape(ops + "/healthz", key=None)
    finally:
        for s in held:
            s.close()
    assert refused.startswith(b"HTTP/1.1 503") and b"connections open; retry" in refused
    assert [s for s, _ in scrapes] == [200] * 20
    assert _sample(scrapes[-1][1], "gateway_open_connections ") == TOTAL
    assert ready[0] == 200 and health[0] == 200


@pytest.mark.asyncio
async def test_metrics_and_readyz_want_the_metrics_key(gw: tuple[Fleet, str]) -> None:
    f, ops = gw
    without = [(await _scrape(ops + p, key=None))[0] for p in ("/metrics", "/readyz")]
    wrong = [(await _scrape(ops + p, key="guess"))[0] for p in ("/metrics", "/readyz")]
    right = [(await _scrape(ops + p))[0] for p in ("/metrics", "/readyz")]
    on_api = [(await _scrape(f.gateway.url + p))[0] for p in ("/metrics", "/readyz", "/healthz")]
    assert without == [401, 401] and wrong == [401, 401] and right == [200, 200]
    assert on_api == [404, 200, 200]  # /metrics lives at its own address only


@pytest.mark.asyncio
async def test_readyz_says_draining_through_the_drain(tmp_path: Path) -> None:
    from tests.gateway_harness import fake_upstream  # noqa: PLC0415

    async def health(request: object) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="ok")

    up = await fake_upstream(post_v1_completions=_slow_stream, get_health=health)
    ops = f"127.0.0.1:{free_port()}"
    path = tmp_path / "gateway.yaml"
    config = {
        "listen": "127.0.0.1:0",
        "backends": [{"name": "slow", "url": up.url, "model": MODEL}],
        "server": {"drain_timeout_s": 2},
        "metrics": {"listen": ops},
    }
    path.write_text(yaml.safe_dump(config))
    gw = await serve_gateway(path)
    events: list[bytes] = []
    try:
        before = await _scrape(f"http://{ops}/readyz", key=None)
        async with aiohttp.ClientSession() as http:
            stream = asyncio.create_task(_stream(http, gw.url, events))
            while len(events) < 2:
                await asyncio.sleep(0.05)
            gw.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            during = await _scrape(f"http://{ops}/readyz", key=None)
            running = not stream.done()
            await asyncio.wait_for(stream, timeout=5)
        assert await asyncio.wait_for(gw.proc.wait(), timeout=5) == 0  # signalled once
    finally:
        if gw.proc.returncode is None:
            gw.proc.kill()
        await up.stop()
    assert before[0] == 200
    assert during[0] == 503 and json.loads(during[1])["draining"] is True, during
    assert running  # observed while a request was still in flight
