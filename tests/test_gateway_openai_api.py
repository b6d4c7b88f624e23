"""The OpenAI API beyond chat and completions, with the OpenAI SDK as the client: embeddings,
`GET /v1/models/{id}`, the Responses API, `n`, and every error in OpenAI's shape (a backend's
plain-text 404 included), over simulated cards, plain upstreams and a real llama-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.server.config import parse
from tests.gateway_harness import (
    MODEL,
    card_config,
    fake_upstream,
    fleet,
    gateway_config,
    start_card,
)
from tests.llamacpp_harness import LlamaServer, llama_servers, start_args

MESSAGES = [{"role": "user", "content": "Say hello."}]
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def two_models(card_url: str, other_url: str, other: str, **top: Any) -> Any:
    """A gateway config: MODEL on a simulated card, `other` on a plain upstream."""
    backends = [
        {"name": "card-0", "url": card_url, "model": MODEL},
        {"name": "other", "url": other_url, "model": other},
    ]
    data = {"listen": "127.0.0.1:0", "backends": backends, "health": {"interval_s": 0.2}, **top}
    return parse(data, env={"TEAM_KEY": "sk-team"})


async def embed(request: web.Request) -> web.Response:
    """POST /v1/embeddings as vLLM answers it for an embedding model (deterministic)."""
    body = await request.json()
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [
        {"object": "embedding", "index": i, "embedding": [len(text) / 10, 0.5]}
        for i, text in enumerate(inputs)
    ]
    usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
    return web.json_response(
        {"object": "list", "data": data, "model": body["model"], "usage": usage}
    )


def response_body(model: str, text: str) -> dict[str, Any]:
    """A Responses API answer in the shape vLLM and llama.cpp send."""
    message = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": model,
        "status": "completed",
        "output": [message],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    }


@pytest.mark.asyncio
async def test_sdk_embeddings_get_openai_answers_and_openai_errors(
    http: aiohttp.ClientSession,
) -> None:
    """The simulated card lacks /v1/embeddings (aiohttp's plain-text `404: Not Found`): the SDK
    gets a NotFoundError in OpenAI's shape naming that answer; an engine that serves it works."""
    card, up = await start_card(), await fake_upstream(post_v1_embeddings=embed)
    async with fleet([], config=two_models(card.url, up.url, "embedder")) as f:
        async with openai.AsyncOpenAI(base_url=f.gateway.url + "/v1", api_key="x") as c:
            r = await c.embeddings.create(model="embedder", input=["hello", "hi"])
            assert [d.embedding for d in r.data] == [[0.5, 0.5], [0.2, 0.5]]
            with pytest.raises(openai.NotFoundError) as caught:
                await c.embeddings.create(model=MODEL, input="hello")
        error = caught.value
        assert isinstance(error.body, dict) and set(error.body) == ERROR_FIELDS
        assert (error.type, error.code, error.param) == ("invalid_request_error", "not_found", None)
        assert error.body["message"] == (
            "backend card-0 answered 404 to POST /v1/embeddings "
            "(it may not serve that endpoint): 404: Not Found"
        )
        body = {"model": MODEL, "input": "hello"}
        async with http.post(f.gateway.url + "/v1/embeddings", json=body) as r:
            assert r.status == 404 and r.content_type == "application/json"
            assert r.headers["x-request-id"] and r.headers["x-gateway-attempts"] == "1"
        assert f.sample("gateway_backend_up", backend="card-0") == 1  # an answer, not a fault
    await up.stop()
    await card.stop()


@pytest.mark.asyncio
async def test_sdk_models_retrieve_sees_the_models_in_rotation(
    http: aiohttp.ClientSession,
) -> None:
    card, gone = await start_card(), await fake_upstream()
    slashed = await fake_upstream(get_health=healthy)
    await gone.stop()  # its port refuses connections: that backend leaves rotation at once
    backends = [
        {"name": "card-0", "url": card.url, "model": MODEL},
        {"name": "slashed", "url": slashed.url, "model": "org/name"},
        {"name": "gone", "url": gone.url, "model": "ghost"},
    ]
    config = parse(
        {"listen": "127.0.0.1:0", "backends": backends, "health": {"interval_s": 0.2}}, env={}
    )
    async with fleet([], config=config) as f:
        await until_out_of_rotation(http, f.gateway.url, "gone")
        async with openai.AsyncOpenAI(base_url=f.gateway.url + "/v1", api_key="x") as c:
            found = await c.models.retrieve(MODEL)
            assert (found.id, found.object, found.owned_by) == (MODEL, "model", "cardinal")
            assert isinstance(found.created, int)
            listed = (await c.models.list()).data
            assert found.model_dump() in [m.model_dump() for m in listed]
            assert (await c.models.retrieve("org/name")).id == "org/name"  # sent as org%2Fname
            async with http.get(f.gateway.url + "/v1/models/org/name") as r:  # and unencoded
                assert r.status == 200 and (await r.json())["id"] == "org/name"
            for name in ("gpt-9", "ghost"):
                with pytest.raises(openai.NotFoundError) as caught:
                    await c.models.retrieve(name)
                error = caught.value
                assert isinstance(error.body, dict) and set(error.body) == ERROR_FIELDS
                assert error.body["message"] == f"The model `{name}` does not exist."
                assert (error.type, error.code, error.param) == (
                    "invalid_request_error",
                    "model_not_found",
                    "model",
                )
    await slashed.stop()
    await card.stop()


async def healthy(request: web.Request) -> web.Response:
    return web.Response()


async def until_out_of_rotation(http: aiohttp.ClientSession, url: str, backend: str) -> None:
    for _ in range(100):
        async with http.get(url + "/readyz") as r:
            if backend not in (await r.json())["backends_up"]:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{backend} never left rotation")


@pytest.mark.asyncio
async def test_models_retrieve_takes_a_key_as_models_does() -> None:
    card = await start_card()
    keys = {"keys": [{"name": "team", "key_env": "TEAM_KEY"}]}
    async with fleet([], config=two_models(card.url, card.url, "other", auth=keys)) as f:
        url = f.gateway.url + "/v1"
        async with openai.AsyncOpenAI(base_url=url, api_key="sk-wrong") as c:
            with pytest.raises(openai.AuthenticationError) as caught:
                await c.models.retrieve(MODEL)
            assert caught.value.code == "invalid_api_key"
        async with openai.AsyncOpenAI(base_url=url, api_key="sk-team") as c:
            assert (await c.models.retrieve(MODEL)).id == MODEL
    await card.stop()


@pytest.mark.asyncio
async def test_sdk_responses_pass_through_whole_and_refuse_stream(
    http: aiohttp.ClientSession,
) -> None:
    seen: list[dict[str, Any]] = []

    async def respond(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        return web.json_response(response_body(body["model"], "Hello there"))

    card, up = await start_card(), await fake_upstream(post_v1_responses=respond)
    async with fleet([], config=two_models(card.url, up.url, "responder")) as f:
        async with openai.AsyncOpenAI(base_url=f.gateway.url + "/v1", api_key="x") as c:
            r = await c.responses.create(
                model="responder", input="Say hello", instructions="Be brief"
            )
            assert r.output_text == "Hello there" and r.usage and r.usage.output_tokens == 2
            assert seen == [
                {"model": "responder", "input": "Say hello", "instructions": "Be brief"}
            ]
            with pytest.raises(openai.BadRequestError) as refused:
                await c.responses.create(model="responder", input="Say hello", stream=True)
            assert refused.value.param == "stream" and "`stream`" in refused.value.message
            with pytest.raises(openai.NotFoundError) as lacking:  # the card lacks the route
                await c.responses.create(model=MODEL, input="Say hello")
            assert "answered 404 to POST /v1/responses" in lacking.value.message
        for body, param in [
            ({"model": "responder"}, "input"),
            ({"input": "hi"}, "model"),
            ({"model": "responder", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
            ({"model": "responder", "input": "hi", "instructions": 3}, "instructions"),
        ]:
            async with http.post(f.gateway.url + "/v1/responses", json=body) as resp:
                error = (await resp.json())["error"]
                assert (resp.status, error["param"], error["type"]) == (
                    400,
                    param,
                    "invalid_request_error",
                ), error
    assert len(seen) == 1  # nothing refused reached the backend
    await up.stop()
    await card.stop()


@pytest.mark.asyncio
async def test_n_above_one_is_refused_in_openai_shape() -> None:
    async with fleet([card_config()]) as f:
        async with openai.AsyncOpenAI(base_url=f.gateway.url + "/v1", api_key="x") as c:
            with pytest.raises(openai.BadRequestError) as chat:
                await c.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
            with pytest.raises(openai.BadRequestError) as text:
                await c.completions.create(model=MODEL, prompt="Once", n=3, max_tokens=2)
            one = await c.chat.completions.create(model=MODEL, messages=MESSAGES, n=1, max_tokens=2)
            assert len(one.choices) == 1
        for caught, n in ((chat, 2), (text, 3)):
            error = caught.value
            assert isinstance(error.body, dict) and set(error.body) == ERROR_FIELDS
            assert (error.type, error.param, error.code) == ("invalid_request_error", "n", None)
            assert error.body["message"].startswith(f"`n` must be 1, got {n}: ")
            assert f"send {n} requests instead" in error.body["message"]
        assert f.served() == [1]  # the refused ones never reached the card


@pytest.mark.asyncio
async def test_backend_errors_in_other_shapes_reach_the_client_in_openais(
    http: aiohttp.ClientSession,
) -> None:
    """Only a backend's non-OpenAI-shaped error is reshaped (same status, its words kept); an
    OpenAI-shaped one passes through byte for byte."""
    answers = {
        "html": web.Response(status=403, text="<h1>Forbidden</h1>", content_type="text/html"),
        "detail": web.json_response({"detail": "Not Found"}, status=404),
        "plain": web.Response(status=501, text="Not Implemented"),
        "empty": web.Response(status=400),
    }
    openai_error = {
        "error": {"message": "bad", "type": "BadRequestError", "param": "x", "code": 400}
    }

    async def answer(request: web.Request) -> web.Response:
        prompt = (await request.json())["prompt"]
        if prompt == "openai":
            return web.json_response(openai_error, status=400)
        return answers[prompt]

    up = await fake_upstream(post_v1_completions=answer)
    async with fleet([], config=gateway_config([up.url])) as f:
        expected = [
            ("html", 403, "invalid_request_error", None, "<h1>Forbidden</h1>"),
            ("detail", 404, "invalid_request_error", "not_found", '{"detail": "Not Found"}'),
            ("plain", 501, "upstream_error", None, "Not Implemented"),
            ("empty", 400, "invalid_request_error", None, "(an empty body)"),
        ]
        for prompt, status, kind, code, words in expected:
            body = {"model": MODEL, "prompt": prompt}
            async with http.post(f.gateway.url + "/v1/completions", json=body) as r:
                error = (await r.json())["error"]
                assert (r.status, error["type"], error["code"]) == (status, kind, code), error
                assert set(error) == ERROR_FIELDS and error["message"].endswith(": " + words)
                assert error["message"].startswith(f"backend card-0 answered {status} to POST")
        body = {"model": MODEL, "prompt": "openai"}
        async with http.post(f.gateway.url + "/v1/completions", json=body) as r:
            assert r.status == 400 and json.loads(await r.read()) == openai_error
    await up.stop()


@pytest.mark.asyncio
async def test_the_gateways_own_404_and_405_are_openai_shaped(http: aiohttp.ClientSession) -> None:
    async with fleet([card_config()]) as f:
        async with http.post(f.gateway.url + "/v1/nothing", json={}) as r:
            error = (await r.json())["error"]
            assert r.status == 404 and set(error) == ERROR_FIELDS
            assert (error["message"], error["code"]) == (
                "Invalid URL (POST /v1/nothing)",
                "not_found",
            )
        async with http.get(f.gateway.url + "/v1/chat/completions") as r:
            error = (await r.json())["error"]
            assert r.status == 405 and r.headers["Allow"] == "POST" and r.headers["x-request-id"]
            assert (
                error["code"] == "method_not_allowed" and error["type"] == "invalid_request_error"
            )
            assert (
                error["message"] == "Method not allowed (GET /v1/chat/completions); allowed: POST"
            )
        async with openai.AsyncOpenAI(base_url=f.gateway.url + "/v2", api_key="x") as c:
            with pytest.raises(openai.NotFoundError) as caught:
                await c.models.list()
            assert caught.value.code == "not_found"


# -- a real engine that serves the Responses API --------------------------------------------


@pytest.fixture
def llama(tiny_model: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    with llama_servers(start_args(tiny_model, 1, parallel=1), logs=tmp_path) as started:
        yield started[0]


@pytest.mark.asyncio
async def test_responses_through_the_gateway_from_a_real_llama_server(
    llama: LlamaServer,
) -> None:
    async with fleet([], config=gateway_config([llama.url])) as f:
        async with openai.AsyncOpenAI(base_url=f.gateway.url + "/v1", api_key="x") as c:
            r = await c.responses.create(model=MODEL, input="the cat", max_output_tokens=4)
            assert r.object == "response" and r.status in ("completed", "incomplete")
            assert r.usage is not None and r.usage.output_tokens > 0
            with pytest.raises(openai.BadRequestError) as caught:  # llama.cpp refuses it too
                await c.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
            assert caught.value.param == "n" and caught.value.type == "invalid_request_error"
        assert f.served() == [1]
