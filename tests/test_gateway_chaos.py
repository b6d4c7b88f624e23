"""The chaos suite: steady load through the gateway onto simulated cards while something breaks.

Every request is accounted for, as its client saw it:
- completed: 200 and a stream that ends with [DONE], on the first backend tried;
- retried: the same, after the gateway moved it to another backend (`x-gateway-attempts` > 1);
- rejected: an HTTP error in OpenAI's shape (429, 502, 503, ...), or the connection refused,
  closed or reset before any byte was answered (the gateway is stopping), all safe to retry;
- stream error: a 200 stream that ends with an error event, in-band, as OpenAI does;
- lost: anything else (a stream cut without an error event, an error that is not OpenAI's
  shape, a connection dropped after the request was taken), and
- hung: no end within the client's deadline.
Each case prints its accounting and asserts zero lost and zero hung.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.sim.server import CardConfig
from tests.gateway_harness import (
    MODEL,
    Fleet,
    Served,
    card_config,
    fake_upstream,
    fleet,
    gateway_config,
    start_card,
)
from tests.process_harness import needs_redis, redis_server, serve_gateway, sim_card

RATE = 20.0  # requests per second, open loop
LOAD_S = 3.0
DEADLINE_S = 10.0  # the client gives up here: a request still open then is hung
MAX_TOKENS = 48
# Short upstream timeouts so a hung card costs a retry, not the client's whole deadline.
CHAOS_TOP: dict[str, Any] = {
    "timeouts": {"connect_s": 0.5, "read_s": 1.5},
    "health": {"interval_s": 0.2, "timeout_s": 0.5, "max_backoff_s": 1.0},
    "admission": {"queue_timeout_s": 3.0},
}


def l4() -> CardConfig:
    return card_config(gpu="l4")  # 48 tokens take ~0.3 s: streams are open when things break


@dataclass
class Outcome:
    kind: str
    detail: str = ""


@dataclass
class Accounting:
    case: str
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.outcomes)

    def report(self) -> str:
        kinds = Counter(o.kind for o in self.outcomes)
        details = Counter(f"{o.kind}: {o.detail}" for o in self.outcomes if o.detail)
        order = ["completed", "retried", "rejected", "stream_error", "lost", "hung"]
        line = ", ".join(f"{k} {kinds.get(k, 0)}" for k in order)
        extra = "".join(f"\n    {n:4d} x {d}" for d, n in sorted(details.items()))
        return f"chaos [{self.case}] {len(self.outcomes)} requests: {line}{extra}"

    def check(self) -> None:
        print("\n" + self.report())
        assert self.count("lost") == 0, self.report()
        assert self.count("hung") == 0, self.report()
        assert len(self.outcomes) == int(RATE * LOAD_S)


async def one(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], *, fresh: bool = False
) -> Outcome:
    """One streamed request, accounted for. `fresh`: on a new connection each, which a
    closing listener may reset from its backlog before any answer (as it refuses the next)."""
    body = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": MAX_TOKENS, "stream": True}
    got_status = False
    try:
        async with asyncio.timeout(DEADLINE_S):
            async with http.post(url + "/v1/completions", json=body, headers=headers) as r:
                got_status = True
                if r.status != 200:
                    return _rejected(r.status, await r.read())
                return await _stream(r)
    except TimeoutError:
        return Outcome("hung")
    except aiohttp.ClientConnectorError:
        return Outcome("rejected", "connection refused")
    except aiohttp.ClientError as e:
        # closed, or reset from the listen backlog as the listener closes, before any answer;
        # a request taken and then dropped shows as a card's generation no client got
        if not got_status and isinstance(
            e, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
        ):
            return Outcome("rejected", "closed before any answer")
        return Outcome("lost", type(e).__name__)


def _rejected(status: int, payload: bytes) -> Outcome:
    try:
        error = json.loads(payload)["error"]
        return Outcome("rejected", f"{status} {error['code'] or error['type']}")
    except (ValueError, KeyError, TypeError):
        return Outcome("lost", f"{status} not in OpenAI's error shape: {payload[:60]!r}")


async def _stream(r: aiohttp.ClientResponse) -> Outcome:
    tokens, done, error = 0, False, None
    async for line in r.content:
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            done = True
            continue
        try:
            event = json.loads(data)
        except ValueError:
            return Outcome("lost", f"malformed event reached the client: {data[:40]!r}")
        if "error" in event:
            error = event["error"].get("code") or "error"
        else:
            tokens += 1
    if error is not None:
        return Outcome("stream_error", error)
    if not done:
        return Outcome("lost", f"stream ended after {tokens} events without [DONE]")
    attempts = int(r.headers.get("x-gateway-attempts", "1"))
    return Outcome("retried" if attempts > 1 else "completed")


Chaos = Callable[[], Awaitable[None]]


async def under_load(
    case: str,
    url: str,
    events: list[tuple[float, Chaos]],
    *,
    headers: dict[str, str] | None = None,
    fresh_connections: bool = False,
) -> Accounting:
    """Open-loop load for LOAD_S seconds; each event runs at its time into the load."""
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, force_close=fresh_connections)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        start = loop.time()

        async def chaos() -> None:
            for at, action in events:
                await asyncio.sleep(max(0.0, start + at - loop.time()))
                await action()

        chaos_task = asyncio.create_task(chaos())
        tasks = []
        for i in range(int(RATE * LOAD_S)):
            await asyncio.sleep(max(0.0, start + i / RATE - loop.time()))
            tasks.append(
                asyncio.create_task(one(http, url, headers or {}, fresh=fresh_connections))
            )
        outcomes = await asyncio.gather(*tasks)
        await chaos_task
    return Accounting(case, list(outcomes))


async def fault(card: Served, **faults: Any) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(card.url + "/admin/faults", json=faults) as r,
    ):
        assert r.status == 200, await r.text()


async def clear(card: Served) -> None:
    async with aiohttp.ClientSession() as http, http.delete(card.url + "/admin/faults") as r:
        assert r.status == 200


@asynccontextmanager
async def chaos_fleet(cards: int = 3, **top: Any) -> AsyncIterator[Fleet]:
    async with fleet([l4() for _ in range(cards)], **{**CHAOS_TOP, **top}) as f:
        yield f


# -- cases on an in-process gateway ------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_card_killed_mid_load() -> None:
    """SIGKILL to a card's process: its streams are cut, its port refuses."""
    proc, url = await sim_card(MODEL, gpu="l4")
    cards = [await start_card(l4()) for _ in range(2)]
    config = gateway_config([url] + [c.url for c in cards], **CHAOS_TOP)

    async def kill() -> None:
        proc.kill()

    try:
        async with fleet([], config) as f:
            acc = await under_load("card killed", f.gateway.url, [(1.0, kill)])
            cut = f.sample("gateway_stream_errors_total", backend="card-0")
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        for c in cards:
            await c.stop()
    acc.check()
    assert acc.count("stream_error") == cut  # each stream it cut ended with an error event
    assert acc.count("completed") + acc.count("retried") >= 0.8 * len(acc.outcomes)


@pytest.mark.asyncio
async def test_a_card_hung() -> None:
    async with chaos_fleet() as f:
        card = f.cards[0]
        acc = await under_load("card hung", f.gateway.url, [(0.8, lambda: fault(card, hang=True))])
        await clear(card)
    acc.check()
    assert acc.count("retried") >= 1  # those sent to it before the probe noticed
    assert acc.count("completed") + acc.count("retried") == len(acc.outcomes)


@pytest.mark.asyncio
async def test_a_card_slowed_tenfold() -> None:
    async with chaos_fleet() as f:
        card = f.cards[0]
        acc = await under_load(
            "card slowed 10x", f.gateway.url, [(0.8, lambda: fault(card, slowdown=10))]
        )
    acc.check()
    assert acc.count("completed") + acc.count("retried") == len(acc.outcomes)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("name", "faults"),
    [("500", {"error_rate": 1.0}), ("503", {"loading_s": 2.0})],
)
async def test_a_card_answering_errors(name: str, faults: dict[str, Any]) -> None:
    # A loading card's /health answers 503 too: with the default recheck (every 1 s) the probe
    # could find it before any request did, and nothing would be left to retry. Here the probe
    # stays away for the whole load, so the requests are what find the 503s.
    health = {**CHAOS_TOP["health"], "interval_s": 3.0}
    async with chaos_fleet(health=health) as f:
        card = f.cards[0]
        acc = await under_load(
            f"card answering {name}", f.gateway.url, [(0.8, lambda: fault(card, **faults))]
        )
    acc.check()
    assert acc.count("retried") >= 1
    assert acc.count("completed") + acc.count("retried") == len(acc.outcomes)


@pytest.mark.asyncio
async def test_a_card_answering_malformed_sse() -> None:
    """One backend sends garbage first, then streams cut short without [DONE], in turns."""
    turn = iter(range(10**6))

    async def broken(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if next(turn) % 2 == 0:
            await resp.write(b"<html>upstream proxy error</html>\n\n")
        else:
            event = {"choices": [{"index": 0, "text": "Once"}]}
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await asyncio.sleep(0.05)
            await resp.write(b"data: {not json at all\n\n")
        return resp  # ends without [DONE]

    bad = await fake_upstream(post_v1_completions=broken)
    cards = [await start_card(l4()) for _ in range(2)]
    config = gateway_config([c.url for c in cards] + [bad.url], **CHAOS_TOP)
    try:
        async with fleet([], config) as f:
            acc = await under_load("malformed SSE", f.gateway.url, [])
            served_bad = f.sample("gateway_retries_total", backend="card-2", reason="malformed")
    finally:
        for s in [*cards, bad]:
            await s.stop()
    acc.check()
    assert served_bad >= 1 and acc.count("retried") >= 1


@needs_redis
@pytest.mark.asyncio
async def test_redis_stopped_and_restarted(tmp_path: Path) -> None:
    with redis_server(tmp_path) as redis:
        top = {
            "limits": {"redis_url": redis.url, "redis_retry_s": 0.3},
            "auth": {"keys": [{"name": "load", "key_env": "ADMIN_KEY"}]},
        }
        key_limits = {"requests_per_minute": 100_000, "max_concurrent": 1000}
        top["auth"]["keys"][0]["limits"] = key_limits

        async def restart() -> None:
            await asyncio.to_thread(redis.start)

        async with chaos_fleet(**top) as f:
            acc = await under_load(
                "Redis stopped and restarted",
                f.gateway.url,
                [(0.8, lambda: asyncio.to_thread(redis.stop)), (2.0, restart)],
                headers={"Authorization": "Bearer secret"},
            )
            await asyncio.sleep(0.4)
            async with aiohttp.ClientSession() as http:  # one more, to find Redis back
                assert (await one(http, f.gateway.url, {"Authorization": "Bearer secret"})).kind
            errors = f.sample("gateway_redis_errors_total")
            store = f.sample("gateway_limits_backend", store="redis")
    acc.check()
    print(f"    Redis errors seen by the gateway: {errors:g}; back on Redis: {store == 1}")
    assert acc.count("completed") + acc.count("retried") == len(acc.outcomes)
    assert errors >= 1 and store == 1


# -- cases on `cardinal serve` processes ------------------------------------------------------


def write_config(path: Path, cards: list[Served]) -> None:
    data = {
        "listen": "127.0.0.1:0",
        "backends": [{"name": f"card-{c.url[-5:]}", "url": c.url, "model": MODEL} for c in cards],
        **CHAOS_TOP,
        "server": {"drain_timeout_s": 8},
        "admin": {"key_env": "ADMIN_KEY"},
    }
    path.write_text(yaml.safe_dump(data))


async def backends(url: str) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": "Bearer secret"}
        async with http.get(url + "/admin/backends", headers=headers) as r:
            return {b["url"]: b for b in (await r.json())["backends"]}


async def finished_on(cards: list[Served]) -> int:
    """Generation requests the cards finished (their `vllm:e2e_request_latency_seconds`)."""
    total = 0.0
    async with aiohttp.ClientSession() as http:
        for c in cards:
            async with http.get(c.url + "/metrics") as r:
                for line in (await r.text()).splitlines():
                    if line.startswith("vllm:e2e_request_latency_seconds_count"):
                        total += float(line.split()[-1])
    return int(total)


@pytest.mark.asyncio
async def test_cards_added_and_removed_by_sighup(tmp_path: Path) -> None:
    cards = [await start_card(l4()) for _ in range(3)]
    path = tmp_path / "gateway.yaml"
    write_config(path, cards[:2])
    gw = await serve_gateway(path, env={"ADMIN_KEY": "secret"})

    async def add_third() -> None:
        write_config(path, cards)
        gw.proc.send_signal(signal.SIGHUP)

    async def remove_first() -> None:
        write_config(path, cards[1:])
        gw.proc.send_signal(signal.SIGHUP)

    try:
        acc = await under_load(
            "card added, then one removed, by SIGHUP",
            gw.url,
            [(0.8, add_third), (1.8, remove_first)],
        )
        state = await backends(gw.url)
    finally:
        assert await gw.stop() == 0
        for c in cards:
            await c.stop()
    acc.check()
    assert acc.count("completed") == len(acc.outcomes)  # nobody even noticed
    assert list(state) == [cards[1].url, cards[2].url]
    assert state[cards[2].url]["served"] > 0


@pytest.mark.asyncio
async def test_the_gateway_sigterm_mid_load_drains(tmp_path: Path) -> None:
    cards = [await start_card(l4()) for _ in range(3)]
    path = tmp_path / "gateway.yaml"
    write_config(path, cards)
    gw = await serve_gateway(path, env={"ADMIN_KEY": "secret"})
    before = await finished_on(cards)
    stopped: list[float] = []

    async def sigterm() -> None:
        stopped.append(time.monotonic())
        gw.proc.send_signal(signal.SIGTERM)

    try:
        # a fresh connection per request, as many clients behind a load balancer: a reused
        # keep-alive connection the gateway closes while idle is a client-side retry anyway
        acc = await under_load(
            "gateway SIGTERM mid-load", gw.url, [(1.5, sigterm)], fresh_connections=True
        )
        code = await gw.stop(timeout=15)
        await gw.read_rest()
        upstream = await finished_on(cards) - before
    finally:
        for c in cards:
            await c.stop()
    acc.check()
    print(f"    gateway exit {code}: {gw.lines}; cards finished {upstream} generations")
    assert code == 0 and any(line.startswith("gateway: draining") for line in gw.lines)
    done = acc.count("completed") + acc.count("retried")
    assert done >= RATE * 1.0  # those before the signal, and those in flight at it
    assert acc.count("rejected") == len(acc.outcomes) - done  # the rest: refused, never taken
    assert upstream == done  # nothing ran on a card without reaching its client
