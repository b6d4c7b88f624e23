"""Fuzzing the gateway: over 10,000 generated malformed or hostile requests (methods, paths,
headers, bodies, sizes) sent as raw bytes to a `cardinal serve` process. None may get a 5xx (the
backend behind it is a stub that always answers), the process must stay up, and its memory and
file descriptors must stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.server.runner import start
from tests.gateway_harness import MODEL
from tests.process_harness import CARDINAL

EXAMPLES = 10_000
WARM_UP = 300  # memory is compared from this request on
MAX_BODY = 64 * 1024
KEY = "sk-fuzz"

# -- the stub backend, on its own loop in a thread ----------------------------------------------


async def _stub(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("stream"):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "text": "hi"}]}\n\ndata: [DONE]\n\n')
        return resp
    usage = {"prompt_tokens": 3, "completion_tokens": 1}
    return web.json_response({"choices": [{"index": 0, "text": "hi"}], "usage": usage})


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    app = web.Application(client_max_size=4 * MAX_BODY)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, _stub)
    runner = loop.run_until_complete(start(app, host="127.0.0.1", port=0))
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://{host}:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


@pytest.fixture(scope="module")
def gateway(stub_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    path = tmp_path_factory.mktemp("fuzz") / "gateway.yaml"
    config = {
        "listen": "127.0.0.1:0",
        "backends": [{"name": "stub", "url": stub_url, "model": MODEL}],
        "max_body_bytes": MAX_BODY,
        "server": {"header_timeout_s": 2, "body_timeout_s": 2},
        "auth": {"keys": [{"name": "fuzz", "key_env": "FUZZ_KEY"}]},
        "admin": {"key_env": "FUZZ_ADMIN"},
    }
    path.write_text(yaml.safe_dump(config))
    env = {"FUZZ_KEY": KEY, "FUZZ_ADMIN": "admin"}
    proc = subprocess.Popen(
        [str(CARDINAL), "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("gateway: http://"), line
    host, port = line.split()[1].removeprefix("http://").rsplit(":", 1)
    yield proc, (host, int(port))
    proc.terminate()
    proc.wait(timeout=15)
    proc.stdout.close()


# -- what is sent -------------------------------------------------------------------------------

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_ABCXYZ0123456789", min_size=1, max_size=20)
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)
JSON_ANY = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=8,
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool"]), JSON_LEAF),
        "content": st.one_of(st.text(max_size=80), JSON_ANY),
        "name": JSON_LEAF,
    },
)
OPENAI_BODY = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just(MODEL), st.text(max_size=20), JSON_LEAF),
        "messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON_ANY),
        "prompt": st.one_of(st.text(max_size=100), st.lists(st.integers(0, 50_000)), JSON_ANY),
        "input": st.one_of(st.text(max_size=50), JSON_ANY),
        "max_tokens": st.one_of(st.integers(-5, 10**6), JSON_LEAF),
        "stream": st.one_of(st.booleans(), JSON_LEAF),
        "temperature": JSON_LEAF,
        "top_p": JSON_LEAF,
        "n": JSON_LEAF,
        "stop": st.one_of(st.text(max_size=5), JSON_ANY),
        "stream_options": JSON_ANY,
    },
)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


BODY = st.one_of(
    OPENAI_BODY.map(_json_bytes),
    OPENAI_BODY.map(_json_bytes),  # twice as likely: the bodies that get furthest in
    JSON_ANY.map(_json_bytes),
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(MAX_BODY - 16, 3 * MAX_BODY).map(lambda n: b'{"model": "' + b"x" * n + b'"}'),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b"", b"{", b"null", b'{"model": NaN}', b"\xff\xfe\x00", b"{}" * 1000]),
)
API = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
PATH = st.one_of(
    API,
    API,
    API,
    st.sampled_from(
        [
            "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
            "/healthz", "/readyz", "/metrics", "/admin/backends", "/admin/reload",
            "/v1/../admin/reload", "//v1/completions", "/v1/completions?x=%00", "/%ff%fe",
        ]
    ),
    st.text(alphabet="/abcdefv1%._-~?=&", max_size=60).map(lambda p: "/" + p),
)  # fmt: skip
METHOD = st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "FOO"])
HEADER_VALUE = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60
).map(str.strip)
AUTH = st.one_of(
    st.just(f"Bearer {KEY}"),
    st.just(f"Bearer {KEY}"),
    st.just("Bearer admin"),
    HEADER_VALUE,
    st.just("Bearer " + "k" * 4000),
)
HEADERS = st.dictionaries(
    st.sampled_from(
        ["Content-Type", "X-Request-Id", "Accept", "X-Session-Id", "User-Agent", "Accept-Encoding"]
    )
    | TOKEN.map(lambda t: "X-" + t),
    HEADER_VALUE,
    max_size=6,
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    method, path, body = draw(METHOD), draw(PATH), draw(BODY)
    headers = {**draw(HEADERS)}
    if draw(st.booleans()):
        headers["Authorization"] = draw(AUTH)
    if draw(st.integers(0, 20)) == 0:
        headers["Transfer-Encoding"] = "chunked"  # and a body that is not chunked
    head = f"{method} {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "host")
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1", "replace") + body


def send(address: tuple[str, int], raw: bytes) -> int:
    """The response's status (0: closed without one)."""
    with socket.create_connection(address, timeout=10) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(raw)  # cut mid-body (a 413): the answer may already be there
        data = b""
        try:
            while len(data) < 12 and (chunk := s.recv(4096)):
                data += chunk
        except ConnectionResetError:
            pass
    return int(data[9:12]) if data.startswith(b"HTTP/1.") else 0


def memory(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_fuzz_ten_thousand_hostile_requests(gateway: Any) -> None:
    proc, address = gateway
    statuses: Counter[int] = Counter()
    five_hundreds: list[bytes] = []
    lock = threading.Lock()
    marks: dict[str, tuple[int, int]] = {}
    # Requests go out from a few threads while hypothesis draws the next ones (the two halves
    # cost about the same); a semaphore keeps the backlog short.
    pool = ThreadPoolExecutor(max_workers=4)
    room = threading.BoundedSemaphore(8)

    def run(raw: bytes) -> None:
        try:
            status = send(address, raw)
        finally:
            room.release()
        with lock:
            statuses[status] += 1
            if status >= 500:
                five_hundreds.append(raw[:300])
            if sum(statuses.values()) == WARM_UP:
                marks["start"] = memory(proc.pid)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(raw=raw_requests())
    def fuzz(raw: bytes) -> None:
        room.acquire()
        pool.submit(run, raw)

    t0 = time.monotonic()
    fuzz()
    pool.shutdown(wait=True)
    elapsed = time.monotonic() - t0
    time.sleep(0.5)  # let the last connections close
    marks["end"] = memory(proc.pid)
    sent = sum(statuses.values())
    (rss0, fd0), (rss1, fd1) = marks["start"], marks["end"]
    print(
        f"\nfuzz: {sent} requests in {elapsed:.1f} s; statuses {dict(sorted(statuses.items()))}"
        f"\n      gateway RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB from request "
        f"{WARM_UP} to the end, open fds {fd0} -> {fd1}"
    )
    assert proc.poll() is None, "the gateway died"
    assert sent >= EXAMPLES
    assert not five_hundreds, five_hundreds[:5]
    assert statuses[200] > 50 and statuses[400] > 1000 and statuses[413] > 0
    # oversized bodies on every API path, authorized, as raw bytes: each one a 413 (the fuzz
    # draws only a handful that get past auth and routing to the size check)
    for i, path in enumerate(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] * 4):
        body = b'{"model": "' + b"x" * (MAX_BODY + 1024 * i) + b'"}'
        raw = (
            f"POST {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        assert send(address, raw) == 413, path
    assert rss1 < rss0 * 1.25 + 8 * 1024, "gateway memory grew"
    assert fd1 <= fd0 + 5
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(12).startswith(b"HTTP/1.1 200")
