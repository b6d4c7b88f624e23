"""`cardinal serve` as a process: its drain deadline, and its workers' supervision. Real
processes on loopback: the gateway, over a fake upstream in this process that answers slowly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.gateway_harness import MODEL, Served, fake_upstream
from tests.process_harness import GatewayProcess, serve_gateway

DRAIN_S = 1.5


async def _slow_stream(request: web.Request) -> web.StreamResponse:
    """An event every 0.1 s for 30 s; a non-streamed request waits 30 s for its answer."""
    body = await request.json()
    if not body.get("stream"):
        await asyncio.sleep(30)
        return web.json_response({"choices": [{"text": "late"}]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(300):
        await resp.write(b'data: {"choices":[{"text":"t%d"}]}\n\n' % i)
        await asyncio.sleep(0.1)
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _gateway(tmp_path: Path, *args: str) -> tuple[Served, GatewayProcess]:
    up = await fake_upstream(post_v1_completions=_slow_stream, get_health=_health)
    path = tmp_path / "gateway.yaml"
    config = {
        "listen": "127.0.0.1:0",
        "backends": [{"name": "slow", "url": up.url, "model": MODEL}],
        "server": {"drain_timeout_s": DRAIN_S},
    }
    path.write_text(yaml.safe_dump(config))
    return up, await serve_gateway(path, None, *args)


async def _stream(http: aiohttp.ClientSession, url: str, events: list[bytes]) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 300, "stream": True}
    async with http.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200
        async for line in r.content:
            if line.startswith(b"data: "):
                events.append(line.strip())


@pytest.mark.asyncio
async def test_requests_running_at_the_drain_deadline_are_ended_with_an_error(
    tmp_path: Path,
) -> None:
    up, gw = await _gateway(tmp_path)
    events: list[bytes] = []
    try:
        async with aiohttp.ClientSession() as http:
            stream = asyncio.create_task(_stream(http, gw.url, events))
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 4}
            whole = asyncio.create_task(http.post(gw.url + "/v1/completions", json=body))
            while len(events) < 3:
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(stream, timeout=DRAIN_S + 3)
            ended_s = time.monotonic() - t0
            r = await asyncio.wait_for(whole, timeout=DRAIN_S + 3)
            status, answer = r.status, await r.json()
            code = await asyncio.wait_for(gw.proc.wait(), timeout=DRAIN_S + 3)
            exited_s = time.monotonic() - t0
        await gw.read_rest()
    finally:
        if gw.proc.returncode is None:
            gw.proc.kill()
        await up.stop()
    print(f"    stream ended {ended_s:.2f} s and the process {exited_s:.2f} s after SIGTERM")
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "shutting_down", events[-3:]
    assert all(b'"text"' in e for e in events[:-1])  # whole events up to the error
    assert status == 503 and answer["error"]["code"] == "shutting_down"
    assert DRAIN_S - 0.1 < ended_s < DRAIN_S + 1.0
    assert code == 0 and exited_s < DRAIN_S + 1.5  # not twice the deadline
    assert any(
        "1 requests ended with an error" in line or "2 requests" in line for line in gw.lines
    )


def _workers(parent: int) -> list[int]:
    """The parent's worker processes (spawned: their command line names multiprocessing), from
    any of its threads (a restart spawns from a worker thread)."""
    children = []
    for task in Path(f"/proc/{parent}/task").glob("*"):
        try:
            children += (task / "children").read_text().split()
        except FileNotFoundError:
            continue
    pids = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(pid)
    return pids


async def _wait_for(check, timeout_s: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        await asyncio.sleep(0.1)
    return check()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def _ok(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url + "/v1/models") as r:
        return r.status


@pytest.mark.asyncio
async def test_a_killed_worker_is_restarted(tmp_path: Path) -> None:
    up, gw = await _gateway(tmp_path, "--workers", "2")
    try:
        (first,) = await _wait_for(lambda: _workers(gw.proc.pid), 10)
        os.kill(first, signal.SIGKILL)
        restarted = await _wait_for(
            lambda: [p for p in _workers(gw.proc.pid) if p != first], FIRST_RESTART_S + 10
        )
        assert restarted, "no worker was started again"
        # the new worker serves: every one of many fresh connections is answered
        statuses = [await _ok(gw.url) for _ in range(20)]
        assert await gw.stop(timeout=DRAIN_S + 8) == 0
        await gw.read_rest()
    finally:
        if gw.proc.returncode is None:
            gw.proc.kill()
        await up.stop()
    assert statuses == [200] * 20
    assert any(f"(pid {first}) exited with code -9" in line for line in gw.lines), gw.lines
    assert any("restarted as pid" in line for line in gw.lines)
    assert not _alive(restarted[0])  # and it stopped with the parent


FIRST_RESTART_S = 0.5


@pytest.mark.asyncio
async def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    up, gw = await _gateway(tmp_path, "--workers", "2")
    try:
        (worker,) = await _wait_for(lambda: _workers(gw.proc.pid), 10)
        gw.proc.kill()
        await gw.proc.wait()
        gone = await _wait_for(lambda: not _alive(worker), DRAIN_S + 5)
        if not gone:
            os.kill(worker, signal.SIGKILL)
        with pytest.raises(aiohttp.ClientConnectionError):
            await _ok(gw.url)  # nobody serves the port any more
    finally:
        await up.stop()
    assert gone, "the worker served on as an orphan"
