"""Real servers on loopback for the gateway tests: simulated cards, fake upstreams, the gateway."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.planner.catalog import load_catalog
from gateway.server.app import create_app as create_gateway
from gateway.server.app import live_key
from gateway.server.config import GatewayConfig, parse
from gateway.server.runner import start
from gateway.sim.card import Card, card_from_catalog
from gateway.sim.server import CardConfig
from gateway.sim.server import create_app as create_card

MODEL = "deepseek-r1-distill-qwen-1.5b"


@dataclass(kw_only=True)
class Served:
    url: str
    app: web.Application
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()


@functools.cache
def card(model: str = MODEL, gpu: str = "h100-sxm", max_num_seqs: int | None = None) -> Card:
    return card_from_catalog(
        load_catalog(), model=model, quant="awq", gpu=gpu, max_num_seqs=max_num_seqs
    )


def card_config(
    *,
    speed_of: str = MODEL,
    gpu: str = "h100-sxm",
    max_num_seqs: int | None = None,
    **kw: Any,
) -> CardConfig:
    """A card serving MODEL at the speed of `speed_of` on `gpu` (a slower card, same name)."""
    c = card(speed_of, gpu, max_num_seqs)
    return CardConfig(model_name=MODEL, speed=c.speed, engine=c.engine, **kw)


async def serve(app: web.Application, *, port: int = 0) -> Served:
    runner = await start(app, host="127.0.0.1", port=port, shutdown_timeout=0.2)
    host, port = runner.addresses[0][:2]
    return Served(url=f"http://{host}:{port}", app=app, runner=runner)


async def start_card(config: CardConfig | None = None, *, port: int = 0) -> Served:
    return await serve(create_card(config or card_config()), port=port)


def gateway_config(urls: Sequence[str], *, max_inflight: int = 32, **top: Any) -> GatewayConfig:
    """A config over `urls` (one model); `top` adds or overrides gateway.yaml's top-level keys."""
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "backends": [
            {"name": f"card-{i}", "url": u, "model": MODEL, "max_inflight": max_inflight}
            for i, u in enumerate(urls)
        ],
        "health": {"interval_s": 0.2},
        **top,
    }
    return parse(data, env={"ADMIN_KEY": "secret"})


@dataclass(kw_only=True)
class Fleet:
    gateway: Served
    cards: list[Served]
    registry: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def served(self) -> list[float]:
        """Requests answered 200 by each backend, in config order."""
        backends = self.gateway.app[live_key].config.backends
        return [
            self.sample("gateway_requests_total", model=b.models[0], backend=b.name, code="200")
            for b in backends
        ]


@asynccontextmanager
async def fleet(
    cards: Sequence[CardConfig], config: GatewayConfig | None = None, **top: Any
) -> AsyncIterator[Fleet]:
    served = [await start_card(c) for c in cards]
    cfg = config or gateway_config([s.url for s in served], **top)
    registry = CollectorRegistry()
    gw = await serve(create_gateway(cfg, registry=registry))
    try:
        yield Fleet(gateway=gw, cards=served, registry=registry)
    finally:
        await gw.stop()
        for s in served:
            await s.stop()


async def fake_upstream(**routes: Any) -> Served:
    """A plain aiohttp server: `post_v1_embeddings=handler` serves POST /v1/embeddings."""
    app = web.Application()
    for name, handler in routes.items():
        method, _, path = name.partition("_")
        app.router.add_route(method.upper(), "/" + path.replace("_", "/"), handler)
    return await serve(app)


@dataclass(kw_only=True)
class Result:
    """One request as the client saw it."""

    sent_s: float  # when it was sent (monotonic)
    status: int
    ttft_s: float | None = None  # first token, from the send
    e2e_s: float = 0.0
    tokens: int = 0
    stream_error: bool = False  # an error event arrived in the stream
    retry_after: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.tokens - 1)


async def request(
    http: aiohttp.ClientSession, url: str, *, max_tokens: int, stream: bool = True, **extra: Any
) -> Result:
    """A /v1/completions request, read to the end; never raises for HTTP or stream errors.
    `extra` goes into the body as it is (`ignore_eos=True` for llama-server)."""
    body = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": max_tokens, **extra}
    if stream:
        body["stream"] = True
    t0 = time.monotonic()
    result = Result(sent_s=t0, status=0)
    try:
        async with http.post(url + "/v1/completions", json=body) as r:
            result.status = r.status
            result.retry_after = r.headers.get("Retry-After")
            if r.status == 200 and stream:
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        if b'"error"' in line[:20]:
                            result.stream_error = True
                            continue
                        if result.ttft_s is None:
                            result.ttft_s = time.monotonic() - t0
                        result.tokens += 1
            else:
                await r.read()
    except aiohttp.ClientError:
        result.stream_error = True
    result.e2e_s = time.monotonic() - t0
    return result


async def closed_loop(
    http: aiohttp.ClientSession, url: str, *, workers: int, requests: int, **kw: Any
) -> list[Result]:
    """`workers` clients, each sending its next request when the last one ends."""
    results: list[Result] = []
    left = iter(range(requests))

    async def worker() -> None:
        for _ in left:
            results.append(await request(http, url, **kw))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return results


async def open_loop(
    http: aiohttp.ClientSession, url: str, *, rate: float, duration_s: float, **kw: Any
) -> list[Result]:
    """Requests sent on a fixed schedule, whatever the answers (as real traffic arrives)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(int(rate * duration_s)):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        tasks.append(asyncio.create_task(request(http, url, **kw)))
    return list(await asyncio.gather(*tasks))


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]
