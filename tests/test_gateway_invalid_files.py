"""Files that are not a gateway config at all (binary, not UTF-8, a URL urlsplit refuses, YAML that
reaches past the parser) are refused in one line naming the field: `cardinal serve` exits with
it, and a reload (`POST /admin/reload` or SIGHUP) keeps the running config and counts the error.
One real gateway process serves every reload case."""

from __future__ import annotations

import asyncio
import gzip
import os
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.server.app import create_app
from gateway.server.config import GatewayConfig
from tests.gateway_harness import MODEL, gateway_config, request, serve, start_card
from tests.process_harness import CARDINAL

ADMIN = {"Authorization": "Bearer secret"}
ENV = {"ADMIN_KEY": "secret", "SPACED_KEY": "sk-spaced "}  # a key no header can carry
KEYS = "auth:\n  keys_file: keys.yaml\n"  # appended to a good config


def good(url: str) -> str:
    return (
        "listen: 127.0.0.1:0\n"
        f"backends:\n  - {{name: card-0, url: '{url}', model: {MODEL}}}\n"
        "health: {interval_s: 0.2}\n"
        "admin: {key_env: ADMIN_KEY}\n"
    )


@dataclass(frozen=True)
class Bad:
    """An invalid gateway.yaml (from the good one) and the files beside it."""

    make: Callable[[str], bytes]
    param: str  # the config field the refusal names
    words: str  # in its message
    beside: dict[str, bytes] = field(default_factory=dict)


CASES = {
    "invalid-utf8": Bad(
        lambda g: g.replace("card-0", "card-\xff").encode("latin-1"), "(file)", "not UTF-8 text"
    ),
    "gzip": Bad(lambda g: gzip.compress(g.encode(), mtime=0), "(file)", "not UTF-8 text"),
    "random-bytes": Bad(lambda g: random.Random(22).randbytes(512), "(file)", "not UTF-8 text"),
    "nul-bytes": Bad(lambda g: b"\x00\x01\x02\x03" * 16, "(file)", "character #x0000"),
    "ipv6-url": Bad(
        lambda g: _url(g, "http://[::1"), "backends[0].url", "got 'http://[::1': Invalid IPv6 URL"
    ),
    "port-99999": Bad(
        lambda g: _url(g, "http://127.0.0.1:99999"), "backends[0].url", "Port out of range"
    ),
    "keys-file-not-utf8": Bad(
        lambda g: (g + KEYS).encode(),
        "auth.keys_file",
        "`auth.keys_file` (keys.yaml) is not UTF-8 text",
        beside={"keys.yaml": b"- name: \xff\n  sha256: '00'\n"},
    ),
    "keys-file-nul-path": Bad(
        lambda g: g.encode() + b'auth: {keys_file: "keys\\0.yaml"}\n',
        "auth.keys_file",
        "embedded null byte",
    ),
    "redis-url-ipv6": Bad(
        lambda g: g.encode() + b"limits: {redis_url: 'redis://[::1'}\n",
        "limits.redis_url",
        "`limits.redis_url` must be redis://",
    ),
    "a-list": Bad(lambda g: b"- a\n- b\n", "(top)", "`(top level)` must be a mapping"),
    "deeply-nested": Bad(lambda g: b"a: " + b"[" * 1000, "(file)", "nested too deeply"),
    "python-tag": Bad(
        lambda g: b"listen: !!python/object/apply:os.system ['true']\n",
        "(file)",
        "could not determine a constructor",
    ),
    "key-with-whitespace": Bad(
        lambda g: g.encode() + b"auth: {keys: [{name: a, key_env: SPACED_KEY}]}\n",
        "auth.keys[0].key_env",
        "starts or ends with whitespace",
    ),
    "bad-date": Bad(lambda g: g.encode() + b"surprise: 2024-13-45\n", "(file)", "month must be"),
}


def _url(config: str, url: str) -> bytes:
    start = config.index("url: '") + len("url: '")
    return (config[:start] + url + config[config.index("'", start) :]).encode()


def write_bad(path: Path, bad: Bad, good_text: str) -> None:
    for name, data in bad.beside.items():
        (path.parent / name).write_bytes(data)
    path.write_bytes(bad.make(good_text))


@dataclass(kw_only=True)
class Gateway:
    proc: asyncio.subprocess.Process
    url: str
    config: Path
    good: str
    stderr: list[str]  # its log, as it comes

    async def reload_errors(self, http: aiohttp.ClientSession) -> float:
        async with http.get(self.url + "/metrics") as r:
            text = await r.text()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "gateway_config_reloads_total" and s.labels == {"result": "error"}:
                    return s.value
        return 0.0


async def _collect(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode(errors="replace").rstrip("\n"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    card = await start_card()
    config = tmp_path_factory.mktemp("invalid") / "gateway.yaml"
    config.write_text(good(card.url))
    proc = await asyncio.create_subprocess_exec(
        str(CARDINAL), "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **ENV},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
    assert line.startswith("gateway: http://"), line
    gw = Gateway(proc=proc, url=line.split()[1], config=config, good=good(card.url), stderr=[])
    readers = [
        asyncio.create_task(_collect(proc.stdout, [])),
        asyncio.create_task(_collect(proc.stderr, gw.stderr)),
    ]
    try:
        yield gw
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=15) == 0
        await asyncio.gather(*readers)
        await card.stop()
    assert not [s for s in gw.stderr if "Traceback" in s or "Task exception" in s], gw.stderr


async def _still_serving(http: aiohttp.ClientSession, gw: Gateway) -> None:
    assert (await request(http, gw.url, max_tokens=2)).status == 200


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", CASES)
async def test_admin_reload_refuses_the_file_in_one_line(gateway: Gateway, case: str) -> None:
    bad = CASES[case]
    async with aiohttp.ClientSession() as http:
        before = await gateway.reload_errors(http)
        write_bad(gateway.config, bad, gateway.good)
        async with http.post(gateway.url + "/admin/reload", headers=ADMIN) as r:
            status, body = r.status, await r.json()
        assert status == 400, body
        error = body["error"]
        assert error["param"] == bad.param, error
        assert error["message"].startswith("reload rejected, the running config stays: "), error
        assert bad.words in error["message"] and "\n" not in error["message"], error
        assert await gateway.reload_errors(http) == before + 1
        await _still_serving(http, gateway)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", CASES)
async def test_sighup_refuses_the_file_in_one_log_line(gateway: Gateway, case: str) -> None:
    bad = CASES[case]
    async with aiohttp.ClientSession() as http:
        before = await gateway.reload_errors(http)
        logged = len(gateway.stderr)
        write_bad(gateway.config, bad, gateway.good)
        gateway.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while await gateway.reload_errors(http) == before and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert await gateway.reload_errors(http) == before + 1
        await _still_serving(http, gateway)  # and a task left unretrieved would be logged by now
        while len(gateway.stderr) == logged and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        lines = gateway.stderr[logged:]
        assert len(lines) == 1, lines
        assert lines[0].startswith("gateway: reload rejected, the running config stays: "), lines
        assert f": {bad.param}: " in lines[0] and bad.words in lines[0], lines


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str]]:
    """`cardinal serve` on each invalid file, all at once (each spends most of a second starting
    Python): case -> (exit status, stdout, stderr)."""
    procs = {}
    for case, bad in CASES.items():
        config = tmp_path_factory.mktemp(case) / "gateway.yaml"
        write_bad(config, bad, good("http://127.0.0.1:9"))
        procs[case] = subprocess.Popen(
            [str(CARDINAL), "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **ENV},
        )
    results = {}
    for case, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[case] = (proc.returncode, out, err)
    return results


@pytest.mark.parametrize("case", CASES)
def test_serve_refuses_the_file_in_one_line(
    refusals: dict[str, tuple[int, str, str]], case: str
) -> None:
    status, out, err = refusals[case]
    assert status == 2, (status, out, err)
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith("cardinal serve: error: --config: "), err
    assert CASES[case].words in err and "Traceback" not in err, err


@pytest.mark.asyncio
async def test_a_loader_error_of_any_kind_is_a_rejected_reload() -> None:
    """What the file reader itself fails on (a bug, not a bad file) is still one refusal."""

    def load() -> GatewayConfig:
        raise RuntimeError("the reader\nbroke")

    registry = CollectorRegistry()
    config = gateway_config(["http://127.0.0.1:9"], admin={"key_env": "ADMIN_KEY"})
    gw = await serve(create_app(config, registry=registry, load_config=load))
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(gw.url + "/admin/reload", headers=ADMIN) as r,
        ):
            status, body = r.status, await r.json()
    finally:
        await gw.stop()
    assert status == 400 and body["error"]["param"] == "(file)", body
    message = body["error"]["message"]
    assert message.endswith("the config did not load: RuntimeError: the reader broke"), body
    assert registry.get_sample_value("gateway_config_reloads_total", {"result": "error"}) == 1
