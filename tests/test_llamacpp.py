"""The gateway over real llama.cpp `llama-server` processes serving a tiny random-weight model.

`make test` builds llama-server first (once; see tests/llama_server.py). The model is written by a
fixture, so nothing is downloaded. Two servers with 4 slots each stand for two cards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from gateway.prove.fleet import free_ports
from gateway.server.app import backends_key
from gateway.server.app import create_app as create_gateway
from tests.gateway_harness import MODEL, Served, closed_loop, gateway_config, serve
from tests.llamacpp_harness import (
    LlamaServer,
    llama_servers,
    server_args,
    start_args,
)
from tests.tiny_model import TinyLlama, write_tiny_llama

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def servers(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LlamaServer]]:
    logs = tmp_path_factory.mktemp("llama-logs")
    with llama_servers(start_args(tiny_model, 2), logs=logs) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def start_gateway(urls: list[str], **top: object) -> tuple[Served, CollectorRegistry]:
    registry = CollectorRegistry()
    config = gateway_config(urls, **top)
    return await serve(create_gateway(config, registry=registry)), registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def decoding(http: aiohttp.ClientSession, url: str) -> int:
    """How many of a llama-server's slots are mid-answer: some tokens out, more to come."""
    async with http.get(url + "/slots") as r:
        slots = await r.json()
    # next_token is one object per sequence of the slot (a list; an object in older builds)
    decoded = [sum(t["n_decoded"] for t in _listed(s.get("next_token", []))) for s in slots]
    return sum(bool(s["is_processing"]) and n >= 2 for s, n in zip(slots, decoded, strict=True))


def _listed(x: object) -> list[dict[str, int]]:
    return x if isinstance(x, list) else [x]  # type: ignore[list-item]


async def test_the_tiny_model_generates_on_a_real_server(
    servers: list[LlamaServer], http: aiohttp.ClientSession
) -> None:
    s = servers[0]
    async with http.get(s.url + "/slots") as r:
        assert len(await r.json()) == 4  # -np 4: four parallel slots
    body = {"model": MODEL, "prompt": "the cat and the dog", "max_tokens": 12, "ignore_eos": True}
    async with http.post(s.url + "/v1/completions", json=body) as r:
        answer = await r.json()
    print(f"\nllama-server says: {answer['choices'][0]['text']!r}, timings {answer['timings']}")
    assert answer["usage"]["completion_tokens"] == 12
    assert answer["choices"][0]["text"].isprintable()
    async with http.get(s.url + "/metrics") as r:
        metrics = await r.text()
    assert "llamacpp:tokens_predicted_total" in metrics


async def test_openai_sdk_through_the_gateway_streaming_and_not(
    servers: list[LlamaServer],
) -> None:
    # one request at a time: the default policy's ties fall at random (all six on one server
    # 1 run in 32); in turn, both servers answer three each
    gw, registry = await start_gateway([s.url for s in servers], routing="round_robin")
    exact = {"extra_body": {"ignore_eos": True}}
    try:
        async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x") as c:
            for _ in range(4):
                reply = await c.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "say the day"}],
                    max_tokens=8,
                    **exact,
                )
                assert reply.choices[0].message.content
                assert reply.usage is not None and reply.usage.completion_tokens == 8
            chunks = []
            stream = await c.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "tell me how"}],
                max_tokens=24,
                stream=True,
                **exact,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks.append(chunk.choices[0].delta.content)
            text = await c.completions.create(model=MODEL, prompt="the sun", max_tokens=5, **exact)
            assert text.choices[0].text
        print(f"\nstreamed {len(chunks)} chunks through the gateway: {''.join(chunks)!r}")
        assert len(chunks) >= 12  # passed through token by token, not buffered into one
        served = [
            sample(registry, "gateway_requests_total", model=MODEL, backend=f"card-{i}", code="200")
            for i in range(2)
        ]
        assert served == [3, 3]
    finally:
        await gw.stop()


async def test_engine_aware_reads_llamacpp_counters(
    servers: list[LlamaServer], http: aiohttp.ClientSession
) -> None:
    routing = {"policy": "engine_aware", "scrape_interval_s": 0.1}
    gw, registry = await start_gateway([s.url for s in servers], routing=routing)
    seen: list[tuple[float | None, float | None]] = []
    try:
        backends = gw.app[backends_key]

        async def watch() -> None:
            while True:
                await asyncio.sleep(0.1)
                seen.extend((b.load.running, b.load.tokens_per_s) for b in backends)

        watcher = asyncio.create_task(watch())
        t0 = time.monotonic()
        results = await closed_loop(http, gw.url, workers=8, requests=64, max_tokens=256)
        elapsed = time.monotonic() - t0
        watcher.cancel()
        tokens = sum(r.tokens for r in results)
    finally:
        await gw.stop()
    assert all(r.status == 200 and not r.stream_error for r in results)
    rates = [rate for _, rate in seen if rate]
    print(
        f"\nengine-aware over 2 llama-servers: {tokens / elapsed:.0f} tokens/s delivered, "
        f"scraped rates up to {max(rates, default=0):.0f} tokens/s per server, "
        f"running up to {max((r or 0) for r, _ in seen):.0f}"
    )
    assert any((running or 0) >= 1 for running, _ in seen)  # llamacpp:requests_processing
    # from llamacpp:tokens_predicted_total: a rate per server within reach of what was delivered
    assert rates and max(rates) <= 3 * tokens / elapsed


async def test_a_server_still_loading_is_warming_then_served(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # 400 MB of all-zero FFN weights (a sparse file): llama-server listens at once and answers
    # 503 "Loading model" for about a second while it maps and warms them up
    big = write_tiny_llama(tmp_path / "big.gguf", TinyLlama(ffn=1 << 19, hollow_ffn=True))
    port = free_ports(1)
    health = {"interval_s": 0.1, "max_backoff_s": 0.1}
    gw, registry = await start_gateway([f"http://127.0.0.1:{port}"], health=health)
    states: list[str] = []
    try:
        backend = gw.app[backends_key][0]
        with llama_servers([server_args(big, port=port)], logs=tmp_path, wait=False):
            deadline = time.monotonic() + 60
            while len(states) < 2 or states[-1] != "up":  # it starts optimistic: "up"
                assert time.monotonic() < deadline, f"never admitted: {states[-5:]}"
                if not states or states[-1] != backend.state:
                    states.append(backend.state)
                await asyncio.sleep(0.02)
            body = {"model": MODEL, "prompt": "the", "max_tokens": 2}
            async with http.post(gw.url + "/v1/completions", json=body) as r:
                assert r.status == 200, await r.text()
    finally:
        await gw.stop()
    print(f"\nbackend states while llama-server loaded: {' -> '.join(states)}")
    assert "warming" in states  # the 503 while loading was not taken for a dead server
    assert states[-1] == "up"


async def test_a_server_killed_mid_load_fails_over(
    tiny_model: Path,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    health = {"interval_s": 0.2, "max_backoff_s": 0.5}
    with llama_servers(start_args(tiny_model, 2), logs=tmp_path) as (one, two):
        gw, registry = await start_gateway([one.url, two.url], health=health)
        try:
            load = asyncio.create_task(
                closed_loop(http, gw.url, workers=8, requests=160, max_tokens=200, ignore_eos=True)
            )
            # kill once card-1 is mid-answer on several streams (its /slots: tokens decoded,
            # not done), so some are cut after their first bytes; a count of the gateway's
            # in-flight requests alone can land while they wait for a slot, or between answers
            deadline = time.monotonic() + 10
            while await decoding(http, two.url) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            two.kill()  # SIGKILL: no drain, streams cut mid-answer
            gone_s = time.monotonic()
            results = await load
            counted = sample(registry, "gateway_stream_errors_total", backend="card-1")
            up = sample(registry, "gateway_backend_up", backend="card-1")
        finally:
            await gw.stop()
    cut = [r for r in results if r.stream_error]
    later = [r for r in results if r.sent_s > gone_s + 0.05]
    print(
        f"\nkilled llama-server card-1 mid-load: {len(cut)} streams cut (counted {counted:.0f}), "
        f"{len(later)} requests after the kill all on card-0"
    )
    assert [r.status for r in results] == [200] * len(results)  # none failed before a byte
    assert 1 <= len(cut) == counted
    assert all(r.sent_s < gone_s for r in cut)  # only streams already running were cut
    assert later and not any(r.stream_error for r in later)
    assert up == 0
