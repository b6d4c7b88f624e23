"""Real servers on loopback for the gateway tests: simulated cards, fake upstreams, the gateway."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.planner.catalog import load_catalog
from gateway.server.app import create_app as create_gateway
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


def card_config(*, gpu: str = "h100-sxm", max_num_seqs: int | None = None, **kw: Any) -> CardConfig:
    c = card(MODEL, gpu, max_num_seqs)
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
        return [
            sum(
                self.sample("gateway_requests_total", model=MODEL, backend=f"card-{i}", code=code)
                for code in ("200",)
            )
            for i in range(len(self.cards))
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
