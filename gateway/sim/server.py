"""The simulated card's HTTP face: vLLM's OpenAI API, /health and vLLM's /metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway.sim.disagg import ROLES, Rooms, fetch_room, require_bootstrap
from gateway.sim.engine import Engine, EngineConfig, SequenceTooLong, Speed
from gateway.sim.errors import ApiError, BadRequest
from gateway.sim.faults import FaultError, Faults
from gateway.sim.injector import FaultInjector
from gateway.sim.lag import LagMonitor
from gateway.sim.metrics import CardMetrics
from gateway.sim.protocol import GenRequest, parse
from gateway.sim.stream import TokenEvents, chunk_text


@dataclass(frozen=True, kw_only=True)
class CardConfig:
    model_name: str  # the `model` clients must name, as vLLM's --served-model-name
    speed: Speed
    engine: EngineConfig
    tokens_per_event: int = 1  # tokens per SSE event after the first (timing stays per token)
    default_max_tokens: int = 256  # when the request names none
    faults: Faults = Faults()  # at start; /admin/faults changes them at run time
    seed: int = 0  # of the card's random numbers (which requests the faults hit)
    role: str = "both"  # both | prefill | decode (disagg.py: SGLang's PD protocol)
    kv_transfer_s_per_token: float = 0.0  # decode role: the prompt cache's trip over the NIC
    bootstrap_port: int = 8998  # decode role: a request's null bootstrap_port means this one


config_key = web.AppKey("config_key", CardConfig)
registry_key = web.AppKey("registry_key", CollectorRegistry)
metrics_key = web.AppKey("metrics_key", CardMetrics)
engine_key = web.AppKey("engine_key", Engine)
injector_key = web.AppKey("injector_key", FaultInjector)
lag_key = web.AppKey("lag_key", LagMonitor)
rooms_key = web.AppKey("rooms_key", Rooms)
session_key = web.AppKey("session_key", aiohttp.ClientSession)


def create_app(config: CardConfig, *, lag: LagMonitor | None = None) -> web.Application:
    """One card. Cards served from one process share that process's `lag` monitor (which the
    caller runs); a card given none watches its own loop."""
    app = web.Application(middlewares=[error_middleware])
    registry = CollectorRegistry()
    app[config_key] = config
    app[registry_key] = registry
    app[metrics_key] = CardMetrics(registry, model_name=config.model_name)
    if lag is None:
        lag = LagMonitor()
        app.cleanup_ctx.append(lag_ctx)
    lag.register(registry)
    app[lag_key] = lag
    app.cleanup_ctx.append(engine_ctx)
    if config.role not in ROLES:
        raise ValueError(f"`role` must be one of {', '.join(ROLES)}")
    if config.role == "prefill":
        app[rooms_key] = Rooms()
        app.router.add_get("/bootstrap/rooms/{room}", bootstrap_room)
    if config.role == "decode":
        app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/admin/faults", get_faults)
    app.router.add_post("/admin/faults", set_faults)
    app.router.add_delete("/admin/faults", clear_faults)
    return app


async def lag_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[lag_key].run(), name="sim-lag")
    yield
    task.cancel()
    await asyncio.wait([task])


async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the engine's step loop for the life of the app."""
    config = app[config_key]
    app[injector_key] = injector = FaultInjector(config.faults, seed=config.seed)
    engine = Engine(
        config=config.engine, speed=config.speed, slowdown=lambda: injector.faults.slowdown
    )
    app[engine_key] = engine
    app[metrics_key].watch(
        running=lambda: engine.num_running,
        waiting=lambda: engine.num_waiting,
        kv=lambda: engine.kv_usage,
    )
    task = asyncio.create_task(engine.run(), name="sim-engine")
    yield
    injector.release()
    engine.abort_all()
    task.cancel()
    await asyncio.wait([task])  # waits for the loop to stop without swallowing our own cancel


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    """The decode role's client for the prefill workers' bootstrap servers."""
    async with aiohttp.ClientSession() as session:
        app[session_key] = session
        yield


async def bootstrap_room(request: web.Request) -> web.Response:
    """The prefill role's bootstrap server: answers once the room's prompt is computed."""
    try:
        room = int(request.match_info["room"])
    except ValueError:
        raise BadRequest("the room must be an integer", param="bootstrap_room") from None
    timeout = float(request.query.get("timeout", "60"))
    if not await request.app[rooms_key].wait(room, timeout_s=timeout):
        return web.json_response({"room": room, "ready": False}, status=504)
    return web.json_response({"room": room, "ready": True})


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return web.json_response(e.body(), status=e.status)


async def health(request: web.Request) -> web.Response:
    await request.app[injector_key].health()
    return web.Response()


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[injector_key].faults.as_dict())


async def set_faults(request: web.Request) -> web.Response:
    """Merge the JSON object's faults into the card's (`{"error_rate": 0.2}`)."""
    changes = await _json(request)
    if not isinstance(changes, dict):
        raise BadRequest("the body must be a JSON object of faults")
    try:
        faults = request.app[injector_key].update(changes)
    except FaultError as e:
        raise BadRequest(str(e), param=e.field) from None
    return web.json_response(faults.as_dict())


async def clear_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[injector_key].clear().as_dict())


async def models(request: web.Request) -> web.Response:
    config = request.app[config_key]
    card = {
        "id": config.model_name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": config.model_name,
        "parent": None,
        "max_model_len": config.engine.context_limit,
    }
    return web.json_response({"object": "list", "data": [card]})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, kind="chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, kind="completion")


async def _generate(request: web.Request, *, kind: str) -> web.StreamResponse:
    app = request.app
    config = app[config_key]
    req = parse(await _json(request), kind=kind, served=config.model_name)
    cut_after = await app[injector_key].generation()
    engine = app[engine_key]
    max_tokens, prefilled, room = _max_tokens(config, req), False, None
    if config.role == "prefill":  # the prompt and its first token; the decode worker goes on
        max_tokens, room = 1, require_bootstrap(req, "prefill").room
    elif config.role == "decode":
        b = require_bootstrap(req, "decode")
        await fetch_room(app[session_key], b, default_port=config.bootstrap_port)
        await asyncio.sleep(req.prompt_tokens * config.kv_transfer_s_per_token)
        prefilled = True
    try:
        seq = engine.submit(
            prompt_tokens=req.prompt_tokens, max_tokens=max_tokens, prefilled=prefilled
        )
    except SequenceTooLong as e:
        raise BadRequest(str(e), param="max_tokens") from None
    events = TokenEvents(
        seq, app[metrics_key], per_event=config.tokens_per_event, stop_after=cut_after
    )
    try:
        if req.stream:
            resp = await _stream(request, req, events)
        else:
            resp = await _whole(request, req, events)
        if events.cut:
            _crash(request)
        elif room is not None:  # the prompt is computed: its decode worker may fetch it
            app[rooms_key].ready(room)
        return resp
    finally:
        engine.abort(seq)  # client gone or handler cancelled: free the slot (no-op when done)


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except json.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e.msg}") from None
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid JSON: not UTF-8") from None


def _max_tokens(config: CardConfig, req: GenRequest) -> int:
    if req.max_tokens is not None:
        return req.max_tokens
    room = config.engine.context_limit - req.prompt_tokens
    return max(1, min(config.default_max_tokens, room))


def _crash(request: web.Request) -> None:
    """Die mid-response as a crashed engine does: the connection is reset, no [DONE]."""
    if request.transport is not None:
        request.transport.abort()


async def _whole(request: web.Request, req: GenRequest, events: TokenEvents) -> web.Response:
    async for _ in events:
        if request.transport is None or request.transport.is_closing():
            return web.Response(status=499)  # client gone (nginx's code); `finally` aborts
    if events.cut:
        return web.Response(status=499)
    text = chunk_text(0, events.generated)
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    body = _envelope(req, events, object_="chat.completion" if req.kind == "chat" else None)
    body["choices"] = [{**choice, "logprobs": None, "finish_reason": events.finish_reason}]
    body["usage"] = events.usage()
    return web.json_response(body)


async def _stream(request: web.Request, req: GenRequest, events: TokenEvents) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    chat = req.kind == "chat"
    obj = "chat.completion.chunk" if chat else None
    if chat:
        await _send(resp, _chunk(req, events, obj, {"delta": {"role": "assistant", "content": ""}}))
    start = 0
    async for n in events:
        text = chunk_text(start, n)
        start += n
        part = {"delta": {"content": text}} if chat else {"text": text}
        part["finish_reason"] = events.finish_reason if events.ended_after_this else None
        await _send(resp, _chunk(req, events, obj, part))
    if events.cut:
        return resp
    if req.include_usage:
        await _send(resp, {**_envelope(req, events, obj), "choices": [], "usage": events.usage()})
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def _envelope(req: GenRequest, events: TokenEvents, object_: str | None) -> dict[str, Any]:
    prefix = "chatcmpl" if req.kind == "chat" else "cmpl"
    return {
        "id": f"{prefix}-{events.seq.id}",
        "object": object_ or "text_completion",
        "created": events.created,
        "model": req.model,
    }


def _chunk(
    req: GenRequest, events: TokenEvents, object_: str | None, part: dict[str, Any]
) -> dict[str, Any]:
    choice = {"index": 0, "logprobs": None, "finish_reason": None, **part}
    return {**_envelope(req, events, object_), "choices": [choice]}


async def _send(resp: web.StreamResponse, payload: dict[str, Any]) -> None:
    await resp.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
