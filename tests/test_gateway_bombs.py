"""Compression bombs: a compressed body is inflated by the gateway, never past `max_body_bytes`
and a few at a time, so a flood of small bombs costs a few bodies' worth of memory (16 of them at
once took `cardinal serve` to 441 MB before the 413 while aiohttp's parser inflated them). Real
servers on loopback: `cardinal serve` as users run it, the gateway in process, a simulated card."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import sys
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.server import inflate
from gateway.server.app import inflater_key
from tests.gateway_harness import MODEL, card_config, fleet, start_card
from tests.process_harness import serve_gateway

BOMBS = 16
GROWTH_BOUND_MB = 60  # 4 inflation slots of 8 MiB, and room for the allocator
VALID = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}).encode()
JSON = {"Content-Type": "application/json"}
GZIP = {**JSON, "Content-Encoding": "gzip"}


def bomb(zeros_mib: int, wbits: int = 31) -> bytes:
    """Zeros compressed (gzip by default), built a MiB at a time: 64 MiB of them is 64 KB."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    mib = bytes(1 << 20)
    return b"".join([*(c.compress(mib) for _ in range(zeros_mib)), c.flush()])


def padded(size: int) -> bytes:
    """A valid completions body of exactly `size` bytes (JSON's whitespace pads it)."""
    return VALID[:-1] + b" " * (size - len(VALID)) + b"}"


def brotli(data: bytes) -> bytes:
    assert inflate.BROTLI is not None
    return bytes(inflate.BROTLI.compress(data, quality=5))


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(url + "/v1/completions", data=body, headers=headers) as r:
        return r.status, await r.json()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
@pytest.mark.asyncio
async def test_sixteen_gzip_bombs_get_413_and_cost_the_process_a_few_bodies(
    tmp_path: Path,
) -> None:
    card = await start_card()
    path = tmp_path / "gateway.yaml"
    backends = [{"name": "card", "url": card.url, "model": MODEL}]
    path.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "backends": backends}))
    gw = await serve_gateway(path)  # the default max_body_bytes, 8 MiB
    payload = bomb(64)
    try:
        async with aiohttp.ClientSession() as http:
            # warm: the paths the bombs take have run once (imports, buffers, the card's reply)
            assert (await post(http, gw.url, gzip.compress(VALID), GZIP))[0] == 200
            before_kb = status_kb(gw.proc.pid, "VmRSS")
            answers = await asyncio.gather(
                *(post(http, gw.url, payload, GZIP) for _ in range(BOMBS))
            )
            peak_kb = status_kb(gw.proc.pid, "VmHWM")
            # and the process still serves: a valid body, and one cut short
            ok = await post(http, gw.url, gzip.compress(VALID), GZIP)
            cut = await post(http, gw.url, gzip.compress(VALID)[:-6], GZIP)
    finally:
        assert await gw.stop() == 0
        await card.stop()
    growth_mb = (peak_kb - before_kb) / 1024
    print(
        f"\n{BOMBS} gzip bombs of {len(payload) / 1024:.0f} KB (64 MiB inflated) at once: "
        f"RSS {before_kb / 1024:.1f} MB before, peak {peak_kb / 1024:.1f} MB (+{growth_mb:.1f})"
    )
    assert [(s, e["error"]["code"]) for s, e in answers] == [(413, "request_too_large")] * BOMBS
    assert answers[0][1]["error"]["message"] == "request body exceeds 8388608 bytes"
    assert growth_mb < GROWTH_BOUND_MB
    assert ok[0] == 200 and ok[1]["choices"]
    assert cut == (400, cut[1])
    assert cut[1]["error"]["message"] == "request body is not valid gzip, its Content-Encoding"


MAX = 4096
ENCODED = [
    ("gzip", gzip.compress),
    ("gzip, two members", lambda b: gzip.compress(b[:100]) + gzip.compress(b[100:])),
    ("deflate (zlib)", zlib.compress),
    ("deflate, raw", lambda b: (c := zlib.compressobj(wbits=-15)).compress(b) + c.flush()),
    pytest.param(
        "br",
        brotli,
        marks=pytest.mark.skipif(inflate.BROTLI is None, reason="no Brotli 1.2 installed"),
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("what", "compress"), ENCODED, ids=[e[0] for e in ENCODED[:4]] + ["br"])
async def test_each_encoding_inflates_up_to_max_body_bytes_and_no_further(
    what: str, compress: Any
) -> None:
    headers = {**JSON, "Content-Encoding": what.split()[0].rstrip(",")}
    async with fleet([card_config()], max_body_bytes=MAX) as f, aiohttp.ClientSession() as http:
        url = f.gateway.url
        status, answer = await post(http, url, compress(padded(MAX)), headers)
        assert status == 200 and answer["choices"], answer
        status, answer = await post(http, url, compress(padded(MAX + 1)), headers)
        assert (status, answer["error"]["message"]) == (413, f"request body exceeds {MAX} bytes")
        status, answer = await post(http, url, compress(bytes(64 << 20)), headers)
        assert (status, answer["error"]["code"]) == (413, "request_too_large")
        assert f.served() == [1.0]


@pytest.mark.asyncio
async def test_bodies_that_are_not_their_encoding_get_400_and_unknown_encodings_415() -> None:
    whole = gzip.compress(VALID)
    cases = [
        ("gzip", whole[:-6], 400),  # cut short
        ("gzip", whole + b"trailing", 400),
        ("gzip", whole[:10] + bytes(len(whole) - 10), 400),  # its deflate stream zeroed
        ("deflate", zlib.compress(VALID)[:-3], 400),
        ("br", b"\xff" * 40, 400),
        ("zstd", whole, 415),
        ("gzip, gzip", whole, 415),
    ]
    async with fleet([card_config()]) as f, aiohttp.ClientSession() as http:
        for encoding, body, expected in cases:
            status, answer = await post(
                http, f.gateway.url, body, {**JSON, "Content-Encoding": encoding}
            )
            assert status == expected, (encoding, body[-12:], answer)
            assert "Content-Encoding" in answer["error"]["message"], answer
        assert f.served() == [0.0]


@pytest.mark.asyncio
async def test_br_without_a_bounded_brotli_is_refused_415(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inflate, "BROTLI", None)  # as where Brotli is missing, or before 1.2
    async with fleet([card_config()]) as f, aiohttp.ClientSession() as http:
        headers = {**JSON, "Content-Encoding": "br"}
        status, answer = await post(http, f.gateway.url, b"\x0b\x00\x80", headers)
    assert status == 415 and answer["error"]["code"] == "unsupported_media_type"
    assert answer["error"]["message"].startswith("Content-Encoding br needs the Brotli package")


@pytest.mark.asyncio
async def test_bombs_inflate_a_few_at_a_time_taking_turns_with_the_loop() -> None:
    payload = bomb(64)
    running: list[float] = []
    waiting: list[float] = []
    async with fleet([card_config()]) as f, aiohttp.ClientSession() as http:
        slots = f.gateway.app[inflater_key].slots

        async def watch() -> None:
            while True:
                running.append(f.sample("gateway_inflating_bodies"))
                waiting.append(f.sample("gateway_inflation_queue_depth"))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        answers = await asyncio.gather(
            *(post(http, f.gateway.url, payload, GZIP) for _ in range(BOMBS))
        )
        watcher.cancel()
        after = f.sample("gateway_inflating_bodies"), f.sample("gateway_inflation_queue_depth")
    assert [s for s, _ in answers] == [413] * BOMBS
    # inflations interleave (each yields a piece at a time), never more than the slots at once
    assert slots == 4 and max(running) == slots
    assert max(waiting) > 0 and after == (0, 0)


@pytest.mark.asyncio
async def test_a_body_waiting_for_an_inflation_slot_gets_408_at_the_body_timeout() -> None:
    server = {"body_timeout_s": 0.5}
    async with fleet([card_config()], server=server) as f, aiohttp.ClientSession() as http:
        inflater = f.gateway.app[inflater_key]
        async with contextlib.AsyncExitStack() as held:
            for _ in range(inflater.slots):  # every slot busy
                await held.enter_async_context(inflater.slot())
            loop = asyncio.get_running_loop()
            start = loop.time()
            waiter = asyncio.create_task(post(http, f.gateway.url, gzip.compress(VALID), GZIP))
            while not f.sample("gateway_inflation_queue_depth"):
                await asyncio.sleep(0.01)
            status, answer = await waiter
            waited_s = loop.time() - start
            plain = await post(http, f.gateway.url, VALID, JSON)  # needs no slot
        ok = await post(http, f.gateway.url, gzip.compress(VALID), GZIP)  # slots free again
    assert (status, answer["error"]["code"]) == (408, "request_timeout")
    assert answer["error"]["message"] == (
        "request body not inflated within 0.5 s: all 4 of the gateway's inflation slots stayed busy"
    )
    assert 0.5 <= waited_s < 2
    assert plain[0] == 200 and ok[0] == 200
