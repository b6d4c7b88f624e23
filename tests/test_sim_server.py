"""The simulated card as a real server on loopback, driven by the OpenAI SDK and plain HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import aiohttp
import openai
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.planner.catalog import load_catalog
from gateway.sim.card import card_from_catalog
from gateway.sim.faults import Faults
from gateway.sim.prompt import chat_tokens, text_tokens
from gateway.sim.server import CardConfig, create_app, engine_key

MODEL = "deepseek-r1-distill-qwen-1.5b"


@dataclass(frozen=True, kw_only=True)
class Running:
    url: str
    app: web.Application


@pytest.fixture(scope="module")
def config() -> CardConfig:
    card = card_from_catalog(load_catalog(), model=MODEL, quant="awq", gpu="h100-sxm")
    return CardConfig(model_name=MODEL, speed=card.speed, engine=card.engine)


async def _serve(config: CardConfig) -> AsyncIterator[Running]:
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Running(url=f"http://{host}:{port}", app=app)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def card(config: CardConfig) -> AsyncIterator[Running]:
    async for running in _serve(config):
        yield running


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture
async def client(card: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=card.url + "/v1", api_key="x") as c:
        yield c


MESSAGES = [{"role": "user", "content": "Say hello in five words."}]


@pytest.mark.asyncio
async def test_chat_non_streaming(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (chat_tokens(MESSAGES), 12)


@pytest.mark.asyncio
async def test_chat_streaming_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 9
    assert content[-1].choices[0].finish_reason == "length"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        chat_tokens(MESSAGES),
        9,
        chat_tokens(MESSAGES) + 9,
    )


@pytest.mark.asyncio
async def test_completions_both_modes(client: openai.AsyncOpenAI) -> None:
    whole = await client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (
        text_tokens("Once upon a time"),
        5,
    )
    stream = await client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True
    )
    texts = [c.choices[0].text async for c in stream]
    assert "".join(texts) == whole.choices[0].text


@pytest.mark.asyncio
async def test_tokens_per_event_groups_tokens(
    config: CardConfig, http: aiohttp.ClientSession
) -> None:
    async for card in _serve(replace(config, tokens_per_event=4)):
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 10, "stream": True}
        async with http.post(card.url + "/v1/completions", json=body) as resp:
            events = [line async for line in resp.content if line.startswith(b"data: ")]
    assert len(events) == 1 + 3 + 1  # first token alone, then 4 + 4 + 1, then [DONE]
    assert events[-1] == b"data: [DONE]\n"


@pytest.mark.asyncio
async def test_models_lists_the_served_name(client: openai.AsyncOpenAI) -> None:
    assert [m.id async for m in client.models.list()] == [MODEL]


@pytest.mark.asyncio
async def test_metrics_use_vllm_names(
    card: Running, client: openai.AsyncOpenAI, http: aiohttp.ClientSession
) -> None:
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    async with http.get(card.url + "/metrics") as resp:
        text = await resp.text()
    label = f'{{model_name="{MODEL}"}}'
    assert f"vllm:num_requests_running{label} 0.0" in text
    assert f"vllm:num_requests_waiting{label} 0.0" in text
    assert f"vllm:kv_cache_usage_perc{label} 0.0" in text
    assert f"vllm:generation_tokens_total{label} 3.0" in text
    assert f"vllm:prompt_tokens_total{label} {float(chat_tokens(MESSAGES))}" in text
    for name, count in (
        ("time_to_first_token", 1),
        ("inter_token_latency", 2),
        ("e2e_request_latency", 1),
    ):
        assert f"vllm:{name}_seconds_count{label} {float(count)}" in text
    assert f'vllm:time_to_first_token_seconds_bucket{{le="0.001",model_name="{MODEL}"}}' in text


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL}, 400, "messages"),
        ({"model": MODEL, "messages": MESSAGES, "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": MESSAGES}, 400, "model"),
        ({"model": "gpt-4", "messages": MESSAGES}, 404, "model"),
        ({"model": MODEL, "messages": MESSAGES, "max_tokens": 10**7}, 400, "max_tokens"),
    ],
)
@pytest.mark.asyncio
async def test_errors_have_the_openai_shape(
    card: Running, http: aiohttp.ClientSession, body: dict[str, object], status: int, param: str
) -> None:
    async with http.post(card.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == status
    assert param in error["message"]


@pytest.mark.asyncio
async def test_sdk_raises_on_bad_request(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=-1)


@pytest.mark.asyncio
async def test_health_is_503_while_loading(config: CardConfig, http: aiohttp.ClientSession) -> None:
    async for card in _serve(replace(config, faults=Faults(loading_s=0.3))):
        async with http.get(card.url + "/health") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["message"] == "Loading model"
        await asyncio.sleep(0.35)
        async with http.get(card.url + "/health") as resp:
            assert resp.status == 200


@pytest.mark.asyncio
async def test_client_disconnect_aborts_the_sequence(
    card: Running, http: aiohttp.ClientSession
) -> None:
    engine = card.app[engine_key]
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 100_000, "stream": True}
    async with http.post(card.url + "/v1/chat/completions", json=body) as resp:
        await resp.content.readline()
        assert engine.num_running == 1
    assert await _until_idle(card)  # the server notices the closed socket on its next write
    assert engine.kv_usage == 0


@pytest.mark.asyncio
async def test_non_streaming_disconnect_aborts_too(card: Running) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 100_000}
    timeout = aiohttp.ClientTimeout(total=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.post(card.url + "/v1/chat/completions", json=body)
    assert await _until_idle(card)


async def _until_idle(card: Running) -> bool:
    engine = card.app[engine_key]
    for _ in range(100):
        if engine.num_running == 0 and engine.num_waiting == 0:
            return True
        await asyncio.sleep(0.01)
    return False


@pytest.mark.asyncio
async def test_ignore_eos_and_n_are_checked(card: Running, http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 7, "ignore_eos": True}
    async with http.post(card.url + "/v1/completions", json=body) as resp:
        assert (await resp.json())["usage"]["completion_tokens"] == 7
    for bad, param in (({"ignore_eos": "yes"}, "ignore_eos"), ({"n": 2}, "n")):
        async with http.post(card.url + "/v1/completions", json={**body, **bad}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == param
