"""The gateway's aiohttp application: routes, the error middleware and its resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway.server import validation
from gateway.server.admission import Admission
from gateway.server.auth import Keyring, check_admin, check_key
from gateway.server.backend import Backend
from gateway.server.bucket import LocalStore
from gateway.server.config import GatewayConfig
from gateway.server.errors import (
    SHUTTING_DOWN,
    BadRequest,
    Draining,
    GatewayError,
    MethodNotAllowed,
    ModelNotFound,
    NoBackend,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    UndecodableBody,
)
from gateway.server.health import Prober
from gateway.server.inflate import Inflater
from gateway.server.limits import Limiter, Ticket
from gateway.server.metrics import GatewayMetrics
from gateway.server.policy import RouteRequest, make_policy
from gateway.server.proxy import Call, Proxy
from gateway.server.reload import Live, Reloader
from gateway.server.scrape import Scraper
from gateway.server.shared_limits import ParentStore

log = logging.getLogger("cardinal.gateway")

live_key = web.AppKey("live_key", Live)  # the running config and keys; a reload swaps them
registry_key = web.AppKey("registry_key", CollectorRegistry)
metrics_key = web.AppKey("metrics_key", GatewayMetrics)
backends_key = web.AppKey("backends_key", list[Backend])
admission_key = web.AppKey("admission_key", Admission)
inflater_key = web.AppKey("inflater_key", Inflater)  # compressed bodies (inflate.py)
client_key = web.AppKey("client_key", aiohttp.ClientSession)
proxy_key = web.AppKey("proxy_key", Proxy)
prober_key = web.AppKey("prober_key", Prober)
scraper_key = web.AppKey("scraper_key", Scraper)
limiter_key = web.AppKey("limiter_key", Limiter)
reloader_key = web.AppKey("reloader_key", Reloader)
load_key = web.AppKey("load_key", Callable[[], GatewayConfig] | None)  # type: ignore[arg-type]
rng_key = web.AppKey("rng_key", random.Random)
# (the buckets to keep, the first worker's socket): see create_app
limits_place_key = web.AppKey("limits_place_key", tuple[LocalStore | None, str | None])
request_id_key = web.RequestKey("request_id_key", str)

REQUEST_ID_RE = re.compile(r"[\w.:\-]{1,128}")


def create_app(
    config: GatewayConfig,
    *,
    registry: CollectorRegistry | None = None,
    rng: random.Random | None = None,
    load_config: Callable[[], GatewayConfig] | None = None,
    limits: LocalStore | None = None,
    parent_limits: str | None = None,
) -> web.Application:
    """The gateway; `load_config` reads gateway.yaml again for a reload (None: no reloads).
    `limits`: the per-key buckets to keep (the first of several workers shares them);
    `parent_limits`: in another worker, the Unix socket where the first one serves them."""
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_bytes)
    registry = registry if registry is not None else CollectorRegistry()
    backends = [Backend(b, index=i) for i, b in enumerate(config.backends)]
    rng = rng or random.Random()
    policy = make_policy(config.routing, backends, rng=rng)
    metrics = GatewayMetrics(registry)
    app[live_key] = Live(config=config, keyring=Keyring(config.auth.keys))
    app[load_key] = load_config
    app[limits_place_key] = (limits, parent_limits)
    app[rng_key] = rng
    app[registry_key] = registry
    app[metrics_key] = metrics
    app[backends_key] = backends
    app[admission_key] = Admission(backends, policy, config.admission, metrics)
    metrics.watch(backends, queue_depth=lambda: len(app[admission_key].queue))
    app[inflater_key] = inflater = Inflater(max_bytes=config.max_body_bytes)
    metrics.watch_inflater(running=lambda: inflater.running, waiting=lambda: inflater.waiting)
    app.cleanup_ctx.append(limiter_ctx)
    app.cleanup_ctx.append(client_ctx)
    app.cleanup_ctx.append(prober_ctx)
    if config.routing.policy == "engine_aware":
        app.cleanup_ctx.append(scraper_ctx)
    app.cleanup_ctx.append(reloader_ctx)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)  # ids may hold a slash (org/name)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", health)
    app.router.add_get("/readyz", readyz)
    if config.metrics.listen is None:  # else only at its own address: see ops_app
        app.router.add_get("/metrics", _metrics(registry))
    app.router.add_get("/admin/backends", admin_backends)
    app.router.add_post("/admin/reload", admin_reload)
    return app


def ops_app(app: web.Application) -> web.Application:
    """The gateway `app`'s /metrics, /healthz and /readyz, for an address of their own
    (`metrics.listen`): outside the connection caps, and open until the drain ends."""
    ops = web.Application(middlewares=[error_middleware])
    ops[live_key] = app[live_key]
    ops[backends_key] = app[backends_key]  # changed in place by reloads: always the live list
    ops.router.add_get("/metrics", _metrics(app[registry_key]))
    ops.router.add_get("/healthz", healthz)
    ops.router.add_get("/health", health)
    ops.router.add_get("/readyz", readyz)
    return ops


# -- resources -------------------------------------------------------------------------------


async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """Per-key limits; closed last, after the requests that settle into them."""
    config = app[live_key].config.limits
    local, parent_path = app[limits_place_key]
    parent = ParentStore(parent_path, timeout_s=config.redis_timeout_s) if parent_path else None
    limiter = Limiter(config, app[metrics_key], local=local, parent=parent)
    app[limiter_key] = limiter
    try:
        yield
    finally:
        await limiter.close()


async def client_ctx(app: web.Application) -> AsyncIterator[None]:
    """The one pooled upstream session, and the proxy that uses it."""
    t = app[live_key].config.timeouts
    # No connection limit here: admission already bounds what each backend receives.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.read_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        app[client_key] = session
        app[proxy_key] = Proxy(
            config=app[live_key].config,
            session=session,
            admission=app[admission_key],
            metrics=app[metrics_key],
        )
        async with (
            _background(app[proxy_key].sends.run(), "gateway-send-watch"),
            _background(app[proxy_key].deadlines.run(), "gateway-deadlines"),
        ):
            yield


async def prober_ctx(app: web.Application) -> AsyncIterator[None]:
    prober = Prober(
        app[backends_key],
        config=app[live_key].config.health,
        session=app[client_key],
        admission=app[admission_key],
    )
    app[prober_key] = prober
    async with _background(prober.run(), "gateway-prober"):
        yield


async def reloader_ctx(app: web.Application) -> AsyncIterator[None]:
    app[reloader_key] = Reloader(
        live=app[live_key],
        backends=app[backends_key],
        admission=app[admission_key],
        proxy=app[proxy_key],
        prober=app[prober_key],
        limiter=app[limiter_key],
        scraper=app.get(scraper_key),
        metrics=app[metrics_key],
        rng=app[rng_key],
        load=app[load_key],
    )
    yield


async def scraper_ctx(app: web.Application) -> AsyncIterator[None]:
    scraper = Scraper(
        app[backends_key],
        session=app[client_key],
        interval_s=app[live_key].config.routing.scrape_interval_s,
    )
    app[scraper_key] = scraper
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
        rid = os.urandom(16).hex()  # as random as uuid4().hex, at a fifth of its cost
    request[request_id_key] = rid
    try:
        resp = await handler(request)
    except GatewayError as e:
        resp = _error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = _error_response(_http_error(e, request))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        resp = _error_response(GatewayError("internal error in the gateway"))
    if not resp.prepared:
        resp.headers["x-request-id"] = rid
    return resp


def _error_response(e: GatewayError) -> web.Response:
    return web.json_response(e.body(), status=e.status, headers=e.headers())


def _http_error(e: web.HTTPException, request: web.Request) -> GatewayError:
    """aiohttp's own refusals (no such route, wrong method, body too large) in OpenAI's shape;
    the 404 words its message as OpenAI does."""
    asked = f"{request.method} {request.path[:200]}"
    if e.status == 413:
        return PayloadTooLarge(e.text or "request body too large")
    if isinstance(e, web.HTTPNotFound):
        return NotFound(f"Invalid URL ({asked})")
    if isinstance(e, web.HTTPMethodNotAllowed):
        allowed = e.allowed_methods
        return MethodNotAllowed(
            f"Method not allowed ({asked}); allowed: {', '.join(sorted(allowed))}",
            allowed=allowed,
        )
    error = GatewayError(e.reason)
    error.status = e.status
    error.type = "invalid_request_error" if e.status < 500 else "internal_error"
    return error


# -- the OpenAI API --------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/chat/completions")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "/v1/embeddings")


async def responses(request: web.Request) -> web.StreamResponse:
    """The Responses API (vLLM and llama.cpp serve it), relayed whole: validation refuses
    `stream` (see validation._responses)."""
    return await _forward(request, "/v1/responses")


async def _forward(request: web.Request, path: str) -> web.StreamResponse:
    start_s = asyncio.get_running_loop().time()
    app = request.app
    live = app[live_key]
    key = live.keyring.identify(request.headers)  # before the body: strangers cost nothing
    # and so does a key over its limits: its request is counted (valid or not) before its body
    # is read or parsed
    ticket = await app[limiter_key].admit(key) if key is not None else None
    call: Call | None = None
    parsed: dict[str, Any] = {}
    proxy = app[proxy_key]
    task = proxy.inflight.enter()  # a drain waits for it, then ends it
    try:
        validation.check_headers(request.headers)
        body = await _body(request)
        parsed = validation.parse_body(body)
        validation.check(path, parsed)
        policy = app[admission_key].policy
        stream = parsed.get("stream", False) and path in (validation.CHAT, validation.COMPLETIONS)
        client_usage = stream and validation.asks_usage(parsed)
        call = Call(
            path=path,
            # a stream asks the backend for its usage, to charge and count what it generated
            body=validation.with_usage(body, parsed) if stream and not client_usage else body,
            route=RouteRequest(
                model=parsed["model"],
                key=_affinity_key(request, parsed) if policy.needs_key else None,
            ),
            stream=stream,
            client_usage=client_usage,
            max_tokens=validation.max_tokens(parsed),
            request_id=request[request_id_key],
            start_s=start_s,
            headers=ticket.headers if ticket is not None else {},
        )
        return await proxy.forward(request, call)
    except asyncio.CancelledError:
        if proxy.inflight.cancelled_by_cut():  # the drain deadline passed before its answer
            raise Draining(f"{SHUTTING_DOWN}; retry the request") from None
        raise
    finally:
        proxy.inflight.leave(task)
        if ticket is not None:
            _settle(app[limiter_key], ticket, call, parsed)


def _settle(limiter: Limiter, ticket: Ticket, call: Call | None, body: dict[str, Any]) -> None:
    """Charge the key what the request used; a stream without usage gets its prompt estimated.
    A request refused before it had a call (its body unreadable or invalid) used its request
    from the key's budget and no tokens."""
    if call is None or not call.tally.completion:  # nothing generated: nothing to charge
        limiter.settle(ticket, tokens=0)
        return
    prompt = call.tally.prompt or math.ceil(validation.prompt_chars(body) / 4)
    limiter.settle(ticket, tokens=prompt + call.tally.completion)


async def _body(request: web.Request) -> bytes:
    config = request.app[live_key].config
    server = config.server
    encoding = request.headers.get("Content-Encoding")
    try:
        if encoding is not None and (encoding := encoding.strip().lower()) != "identity":
            # inflated here, not by aiohttp's parser (runner.start turns it off): bounded
            inflater = request.app[inflater_key]
            return await inflater.read(request, encoding, timeout_s=server.body_timeout_s)
        if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
            return await request.read()
        async with asyncio.timeout(server.body_timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body exceeds {config.max_body_bytes} bytes") from None
    except web.RequestPayloadError as e:  # its framing broken (chunks, length)
        raise UndecodableBody(f"request body is malformed: {e}") from None
    except TimeoutError:
        raise RequestTimeout(
            f"request body not received within {server.body_timeout_s:g} s"
        ) from None


def _affinity_key(request: web.Request, body: dict[str, Any]) -> str | None:
    """The session header, else `user`, else the prompt's opening characters."""
    routing = request.app[live_key].config.routing
    key = request.headers.get(routing.affinity_header) or body.get("user")
    if isinstance(key, str) and key:
        return "k:" + key
    prompt = body.get("prompt", body.get("input"))
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
    request.app[live_key].keyring.identify(request.headers)
    created = int(time.time())
    data = [_model_card(name, created) for name in sorted(_served(request.app))]
    return web.json_response({"object": "list", "data": data})


async def model(request: web.Request) -> web.Response:
    """One model as `GET /v1/models` lists it; 404 when no backend in rotation serves it."""
    request.app[live_key].keyring.identify(request.headers)
    name = request.match_info["model"]
    if name not in _served(request.app):
        raise ModelNotFound(f"The model `{name}` does not exist.", param="model")
    return web.json_response(_model_card(name, int(time.time())))


def _served(app: web.Application) -> set[str]:
    return {m for b in app[backends_key] if b.up for m in b.config.models}


def _model_card(name: str, created: int) -> dict[str, Any]:
    """A model in OpenAI's shape."""
    return {"id": name, "object": "model", "created": created, "owned_by": "cardinal"}


# -- operations ------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def health(request: web.Request) -> web.Response:
    """As vLLM's `GET /health` (what guidellm and other load tools check first): 200 with an
    empty body while any backend is in rotation, else 503. It names no backend."""
    if any(b.up for b in request.app[backends_key]):
        return web.Response(status=200)
    raise NoBackend("no backend is in rotation")


def _metrics(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    exposition = make_aiohttp_handler(registry)

    async def metrics(request: web.Request) -> web.Response:
        check_key(request.headers, request.app[live_key].config.metrics.key, "metrics.key_env")
        return await exposition(request)

    return metrics


async def readyz(request: web.Request) -> web.Response:
    """503 while no backend is up, and while draining, so load balancers send traffic elsewhere.
    It names the backends: with `metrics.key_env` set it wants that key too."""
    check_key(request.headers, request.app[live_key].config.metrics.key, "metrics.key_env")
    up = [b.name for b in request.app[backends_key] if b.up]
    draining = request.app[live_key].draining
    ready = bool(up) and not draining
    body = {"ready": ready, "backends_up": up, **({"draining": True} if draining else {})}
    return web.json_response(body, status=200 if ready else 503)


async def admin_backends(request: web.Request) -> web.Response:
    live = request.app[live_key]
    check_admin(request.headers, live.config.admin_key)
    admission = request.app[admission_key]
    return web.json_response(
        {
            "policy": live.config.routing.policy,
            "queue_depth": len(admission.queue),
            "limits_store": request.app[limiter_key].store_name,
            "backends": [b.describe() for b in request.app[backends_key]],
        }
    )


async def admin_reload(request: web.Request) -> web.Response:
    """Reload gateway.yaml (as SIGHUP does); 400 naming the field when the new one is invalid."""
    check_admin(request.headers, request.app[live_key].config.admin_key)
    outcome = await request.app[reloader_key].reload()
    if not outcome.ok:
        raise BadRequest(
            f"reload rejected, the running config stays: {outcome.error}", param=outcome.param
        )
    return web.json_response(outcome.as_dict())
