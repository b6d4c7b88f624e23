"""Reloading gateway.yaml in a running gateway: backends added, drained and removed while requests
are in flight on them, and an invalid file rejected with the running config kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.server.app import backends_key, create_app
from gateway.server.config import load
from gateway.sim.server import CardConfig
from tests.gateway_harness import MODEL, Fleet, Served, card_config, request, serve, start_card

ADMIN = {"Authorization": "Bearer secret"}


def write(path: Path, cards: list[Served | None], **extra: Any) -> None:
    backends = [
        {"name": f"card-{i}", "url": c.url, "model": MODEL, **extra.get(f"card_{i}", {})}
        for i, c in enumerate(cards)
        if c is not None
    ]
    data = {
        "listen": "127.0.0.1:0",
        "backends": backends,
        "health": {"interval_s": 0.2},
        "admin": {"key_env": "ADMIN_KEY"},
    }
    path.write_text(yaml.safe_dump(data))


@asynccontextmanager
async def reloadable(path: Path, cards: list[CardConfig]) -> AsyncIterator[tuple[Fleet, Any]]:
    served = [await start_card(c) for c in cards]
    write(path, served)

    def read() -> Any:
        return load(path.read_text(), env={"ADMIN_KEY": "secret"})

    registry = CollectorRegistry()
    gw = await serve(create_app(read(), registry=registry, load_config=read))
    try:
        yield Fleet(gateway=gw, cards=served, registry=registry), served
    finally:
        await gw.stop()
        for s in served:
            await s.stop()


async def reload(http: aiohttp.ClientSession, f: Fleet) -> tuple[int, dict[str, Any]]:
    async with http.post(f.gateway.url + "/admin/reload", headers=ADMIN) as r:
        return r.status, await r.json()


@pytest.mark.asyncio
async def test_backends_added_drained_and_removed_without_dropping_requests(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    async with (
        reloadable(path, [card_config(), card_config()]) as (f, served),
        aiohttp.ClientSession() as http,
    ):
        extra = await start_card()
        try:
            # streams in flight on both cards while card-1 leaves and card-2 joins
            long = [
                asyncio.create_task(request(http, f.gateway.url, max_tokens=400)) for _ in range(6)
            ]
            await asyncio.sleep(0.3)
            leaving = f.gateway.app[backends_key][1]
            assert leaving.inflight > 0  # the reload below really lands mid-stream
            write(path, [served[0], None, extra])
            status, outcome = await reload(http, f)
            assert status == 200, outcome
            assert outcome["added"] == ["card-2"] and outcome["removed"] == ["card-1"]
            short = [await request(http, f.gateway.url, max_tokens=2) for _ in range(6)]
            results = await asyncio.gather(*long)
            assert [r.status for r in results] == [200] * 6
            assert all(r.tokens == 400 and not r.stream_error for r in results)
            assert [r.status for r in short] == [200] * 6
            names = [b.name for b in f.gateway.app[backends_key]]
            assert names == ["card-0", "card-2"]
            assert f.sample("gateway_requests_total", model=MODEL, backend="card-2", code="200")
            assert f.sample("gateway_backend_up", backend="card-1") == 0  # series gone

            # drain: card-0 takes nothing new, finishes what it has
            streams = [
                asyncio.create_task(request(http, f.gateway.url, max_tokens=300)) for _ in range(4)
            ]
            await asyncio.sleep(0.2)
            text = yaml.safe_load(path.read_text())
            text["backends"][0]["drain"] = True
            path.write_text(yaml.safe_dump(text))
            assert f.gateway.app[backends_key][0].inflight > 0
            status, outcome = await reload(http, f)
            assert status == 200 and outcome["draining"] == ["card-0"], outcome
            before = f.sample("gateway_requests_total", model=MODEL, backend="card-0", code="200")
            after_drain = [await request(http, f.gateway.url, max_tokens=2) for _ in range(4)]
            assert [r.status for r in after_drain] == [200] * 4
            assert all(r.status == 200 and r.tokens == 300 for r in await asyncio.gather(*streams))
            served_0 = f.sample("gateway_requests_total", model=MODEL, backend="card-0", code="200")
            assert served_0 - before <= 4  # only the streams it already had
            async with http.get(f.gateway.url + "/admin/backends", headers=ADMIN) as r:
                states = {b["name"]: b["state"] for b in (await r.json())["backends"]}
            assert states == {"card-0": "draining", "card-2": "up"}
        finally:
            await extra.stop()


@pytest.mark.asyncio
async def test_an_invalid_config_is_rejected_and_the_old_one_keeps_running(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    async with reloadable(path, [card_config()]) as (f, _), aiohttp.ClientSession() as http:
        good = path.read_text()
        for bad, field in [
            (good.replace("interval_s: 0.2", "interval_s: -1"), "health.interval_s"),
            (good + "surprise: 1\n", "surprise"),
            ("backends: [\n", "(file)"),
        ]:
            path.write_text(bad)
            status, body = await reload(http, f)
            assert status == 400 and body["error"]["param"] == field, body
            assert "the running config stays" in body["error"]["message"]
            assert (await request(http, f.gateway.url, max_tokens=2)).status == 200
        path.unlink()
        status, body = await reload(http, f)
        assert status == 400 and "No such file" in body["error"]["message"], body
        assert f.sample("gateway_config_reloads_total", result="error") == 4
        assert f.sample("gateway_config_reloads_total", result="ok") == 0
