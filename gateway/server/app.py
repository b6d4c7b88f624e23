"""The gateway's aiohttp application: routes, the error middleware and its resources."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway.server.admission import Admission
from gateway.server.backend import Backend
from gateway.server.config import GatewayConfig
from gateway.server.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from gateway.server.health import Prober
from gateway.server.metrics import GatewayMetrics
from gateway.server.policy import Policy, RouteRequest, make_policy
from gateway.server.proxy import Call, Proxy
from gateway.server.scrape import Scraper

log = logging.getLogger("cardinal.gateway")

config_key = web.AppKey("config_key", GatewayConfig)
registry_key = web.AppKey("registry_key", CollectorRegistry)
metrics_key = web.AppKey("metrics_key", GatewayMetrics)
backends_key = web.AppKey("backends_key", list[Backend])
policy_key = web.AppKey("policy_key", Policy)  # type: ignore[type-abstract]
admission_key = web.AppKey("admission_key", Admission)
client_key = web.AppKey("client_key", aiohttp.ClientSession)
proxy_key = web.AppKey("proxy_key", Proxy)
prober_key = web.AppKey("prober_key", Prober)
request_id_key = web.RequestKey("request_id_key", str)

REQUEST_ID_RE = re.compile(r"[\w.:\-]{1,128}")


def create_app(
    config: GatewayConfig,
    *,
    registry: CollectorRegistry | None = None,
    rng: random.Random | None = None,
) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_bytes)
    registry = registry if registry is not None else CollectorRegistry()
    backends = [Backend(b, index=i) for i, b in enumerate(config.backends)]
    policy = make_policy(config.routing, backends, rng=rng or random.Random())
    metrics = GatewayMetrics(registry)
    app[config_key] = config
    app[registry_key] = registry
    app[metrics_key] = metrics
    app[backends_key] = backends
    app[policy_key] = policy
    app[admission_key] = Admission(backends, policy, config.admission, metrics)
    metrics.watch(backends, queue_depth=lambda: len(app[admission_key].queue))
    app.cleanup_ctx.append(client_ctx)
    app.cleanup_ctx.append(prober_ctx)
    if config.routing.policy == "engine_aware":
        app.cleanup_ctx.append(scraper_ctx)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/admin/backends", admin_backends)
    return app


# -- resources -------------------------------------------------------------------------------


async def client_ctx(app: web.Application) -> AsyncIterator[None]:
    """The one pooled upstream session, and the proxy that uses it."""
    t = app[config_key].timeouts
    # No connection limit here: admission already bounds what each backend receives.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.read_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        app[client_key] = session
        app[proxy_key] = Proxy(
            config=app[config_key],
            session=session,
            admission=app[admission_key],
            metrics=app[metrics_key],
        )
        yield


async def prober_ctx(app: web.Application) -> AsyncIterator[None]:
    prober = Prober(
        app[backends_key],
        config=app[config_key].health,
        session=app[client_key],
        admission=app[admission_key],
    )
    app[prober_key] = prober
    async with _background(prober.run(), "gateway-prober"):
        yield


async def scraper_ctx(app: web.Application) -> AsyncIterator[None]:
    scraper = Scraper(
        app[backends_key],
        session=app[client_key],
        interval_s=app[config_key].routing.scrape_interval_s,
    )
    async with _background(scraper.run(), "gateway-scraper"):
        yield


@contextlib.asynccontextmanager
async def _background(coro: Awaitable[None], name: str) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coro)
    task.set_name(name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait([task])  # let it stop without swallowing our own cancellation


# -- errors and request ids ------------------------------------------------------------------


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give every response a request id, and every error OpenAI's shape."""
    rid = request.headers.get("x-request-id", "")
    if not REQUEST_ID_RE.fullmatch(rid):
        rid = uuid.uuid4().hex
    request[request_id_key] = rid
    try:
        resp = await handler(request)
    except GatewayError as e:
        resp = _error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = _error_response(_http_error(e))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        resp = _error_response(GatewayError("internal error in the gateway"))
    if not resp.prepared:
        resp.headers["x-request-id"] = rid
    return resp


def _error_response(e: GatewayError) -> web.Response:
    return web.json_response(e.body(), status=e.status, headers=e.headers())


def _http_error(e: web.HTTPException) -> GatewayError:
    if e.status == 413:
        return PayloadTooLarge(e.text or "request body too large")
    error = GatewayError(e.reason)
    error.status = e.status
    error.type = "invalid_request_error" if e.status < 500 else "internal_error"
    error.code = {404: "not_found", 405: "method_not_allowed"}.get(e.status)
    return error


# -- the OpenAI API --------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/chat/completions")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/embeddings")


async def _forward(request: web.Request, path: str) -> web.StreamResponse:
    start_s = asyncio.get_running_loop().time()
    app = request.app
    body = await _body(request)
    parsed = _json_object(body)
    model = parsed.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("`model` is required and must be a string", param="model")
    stream = parsed.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"`stream` must be true or false, got {stream!r}", param="stream")
    key = _affinity_key(request, parsed) if app[policy_key].needs_key else None
    call = Call(
        path=path,
        body=body,
        route=RouteRequest(model=model, key=key),
        stream=stream and path != "/v1/embeddings",
        request_id=request[request_id_key],
        start_s=start_s,
    )
    return await app[proxy_key].forward(request, call)


async def _body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[config_key].max_body_bytes
        raise PayloadTooLarge(f"request body exceeds {limit} bytes") from None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise BadRequest("request body must be a JSON object")
    return parsed


def _affinity_key(request: web.Request, body: dict[str, Any]) -> str | None:
    """The session header, else `user`, else the prompt's opening characters."""
    routing = request.app[config_key].routing
    key = request.headers.get(routing.affinity_header) or body.get("user")
    if isinstance(key, str) and key:
        return "k:" + key
    prompt = body.get("prompt")
    if prompt is None and isinstance(body.get("messages"), list):
        prompt = "".join(
            m["content"]
            for m in body["messages"]
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
    if isinstance(prompt, str) and prompt:
        return "p:" + prompt[: routing.prefix_chars]
    return None


async def models(request: web.Request) -> web.Response:
    """Models served by at least one backend in rotation."""
    names = sorted({m for b in request.app[backends_key] if b.up for m in b.config.models})
    created = int(time.time())
    data = [{"id": n, "object": "model", "created": created, "owned_by": "cardinal"} for n in names]
    return web.json_response({"object": "list", "data": data})


# -- operations ------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    up = [b.name for b in request.app[backends_key] if b.up]
    status = 200 if up else 503
    return web.json_response({"ready": bool(up), "backends_up": up}, status=status)


async def admin_backends(request: web.Request) -> web.Response:
    expected = request.app[config_key].admin_key
    if expected is None:
        raise NotFound("the admin API is off: set `admin.key_env` in gateway.yaml")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("admin key required: `Authorization: Bearer <admin key>`")
    admission = request.app[admission_key]
    return web.json_response(
        {
            "policy": request.app[config_key].routing.policy,
            "queue_depth": len(admission.queue),
            "backends": [b.describe() for b in request.app[backends_key]],
        }
    )
