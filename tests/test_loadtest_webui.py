"""`locust -f loadtest/qps.py` with Locust's web UI, driven through the UI's own HTTP API.

The header's request rate counts the chat requests only (TTFT, TPOT and output tokens are tallied
apart, in a tab of their own, in their own units), and once a run stops its verdict is in the UI:
in the "Cardinal verdict" tab's rows of /stats/requests and at GET /verdict. Real Locust in its
own process, against a loopback card on this test's loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from gateway.prove.fleet import free_ports
from loadtest.verdict import INVALID, PASS, Record, judge
from tests.test_loadtest import (
    BIN,
    FAST_PREFILL_S,
    ROOT,
    SETTINGS,
    SHORT_RUN,
    _card_url,
    _fast_card,
)

RATE, USERS, RUN_S = 10, 2, 7
# what the fast card sends, as the generator reads it (the chunked encoding undone): 5 tokens
BODY_BYTES = 5 * len(b'data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n')
BODY_BYTES += len(b"data: [DONE]\n\n")
SCENARIO = (
    "--model", "m", "--target-qps", str(RATE), "--ttft-slo", "1s",
    "--warmup", "1s", "--cooldown", "1s", *SHORT_RUN,
)  # fmt: skip


@asynccontextmanager
async def _locust_ui(tmp_path: Path) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """Locust with its web UI on a free loopback port, no run started; SIGTERM at the end."""
    port = free_ports(1)
    out, err = (tmp_path / "stdout").open("wb"), (tmp_path / "stderr").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "locust"), "-f", "loadtest/qps.py", "--web-host", "127.0.0.1",
        "--web-port", str(port), *SCENARIO, "--summary-json", str(tmp_path / "s.json"),
        cwd=ROOT, stdout=out, stderr=err, env={**os.environ},
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        out.close()
        err.close()
        print((tmp_path / "stdout").read_text()[-2000:], (tmp_path / "stderr").read_text()[-3000:])


async def _wait_ready(http: aiohttp.ClientSession, base: str, proc: Any) -> str:
    """The UI's page, once it answers."""
    for _ in range(300):
        assert proc.returncode is None, "Locust exited before its web UI answered"
        try:
            async with http.get(base + "/") as resp:
                if resp.status == 200:
                    return await resp.text()
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("Locust's web UI did not answer in 30 s")


async def _until_stopped(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """/stats/requests polled as the UI polls it, until it says "stopped": that last answer."""
    for _ in range(int((RUN_S + 30) / 0.25)):
        async with http.get(base + "/stats/requests") as resp:
            report = await resp.json()
        if report["state"] not in ("running", "spawning"):
            return report  # the UI asks no more once a run is not running
        await asyncio.sleep(0.25)
    raise TimeoutError("the run did not stop")


def _template_args(page: str) -> dict[str, Any]:
    line = next(line for line in page.splitlines() if "window.templateArgs" in line)
    return json.loads(line.split("=", 1)[1].strip().rstrip(";"))


def _rows(report: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return next(tab["data"] for tab in report["extended_stats"] if tab["key"] == key)


@pytest.mark.asyncio
async def test_the_web_ui_counts_chat_requests_and_shows_the_verdict(tmp_path: Path) -> None:
    """A run of 2 users at 10 QPS started from the UI: 10 requests a second in the header (not
    40, not 20), bytes in the size column, measurements in their units, and the verdict in the
    first answer that says "stopped", at /verdict and in the exit code."""
    async with (
        _card_url(_fast_card) as card,
        aiohttp.ClientSession() as http,
        _locust_ui(tmp_path) as (base, proc),
    ):
        page = await _wait_ready(http, base, proc)
        form = {"user_count": USERS, "spawn_rate": 100, "host": card, "run_time": f"{RUN_S}s"}
        async with http.post(base + "/swarm", data=form) as resp:
            assert (await resp.json())["success"]
        report = await _until_stopped(http, base)
        async with http.get(base + "/verdict") as resp:
            verdict = await resp.json()
    assert proc.returncode == verdict["code"]

    tabs = _template_args(page)
    assert [t["key"] for t in tabs["extended_tabs"]] == ["cardinal-measures", "cardinal-verdict"]
    assert report["state"] == "stopped"
    *entries, total = report["stats"]
    assert [(e["method"], e["name"]) for e in entries] == [("POST", "/v1/chat/completions")]
    post = entries[0]
    assert total["num_requests"] == post["num_requests"] >= 0.8 * RATE * RUN_S
    assert report["total_rps"] == pytest.approx(RATE, rel=0.25)
    assert post["avg_content_length"] == BODY_BYTES  # bytes, not the 5 tokens

    measures = {row["name"]: row for row in _rows(report, "cardinal-measures")}
    assert {name: row["unit"] for name, row in measures.items()} == {
        "TTFT": "ms",
        "TPOT": "ms",
        "output tokens": "tokens",
    }
    assert measures["output tokens"]["mean"] == 5.0
    assert measures["TTFT"]["count"] == post["num_requests"] - post["num_failures"]
    assert FAST_PREFILL_S * 1e3 <= measures["TTFT"]["p50"] < 1000

    checks = _rows(report, "cardinal-verdict")
    assert checks[0] == {"name": "verdict", "value": "PASS", "limit": "exit 0", "result": ""}
    assert {"p95 TTFT", "offered QPS"} <= {c["name"] for c in checks}
    assert all(c["result"] == "ok" for c in checks[2:]), checks
    assert verdict["label"] == "PASS" and verdict["code"] == PASS, verdict["table"]
    assert verdict["table"].startswith("Cardinal verdict: PASS (exit 0)")
    assert verdict["verdict"] == json.loads((tmp_path / "s.json").read_text())["verdict"]
    assert "Cardinal verdict: PASS" in (tmp_path / "stdout").read_text()
    assert "LLM measurements" in (tmp_path / "stderr").read_text()


# -- the tallies, on numbers made by hand ---------------------------------------------------------


@pytest.fixture
def webui(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """loadtest/webui.py as Locust imports it: from the locustfile's folder."""
    monkeypatch.syspath_prepend(str(ROOT / "loadtest"))
    import webui  # type: ignore[import-not-found]

    return webui


def _answered(ttft_s: float, tokens: int) -> Record:
    return Record(scheduled=0.0, sent=0.0, first=ttft_s, end=ttft_s + 0.01 * (tokens - 1),
                  tokens=tokens, finished=True)  # fmt: skip


def test_workers_tallies_add_up_to_the_whole_runs(webui: ModuleType) -> None:
    """Two workers' reports (through JSON, as msgpack would carry them) merged on the master
    give the same rows as one process that measured every request; percentiles by nearest rank
    at 3 significant digits."""
    records = [_answered(0.001 * i, 1 + i % 7) for i in range(1, 201)]
    whole, master = webui.Measures(), webui.Measures()
    workers = [webui.Measures(), webui.Measures()]
    for i, rec in enumerate(records):
        whole.add(rec, stream=True)
        workers[i % 2].add(rec, stream=True)
    for worker in workers:
        master.merge(json.loads(json.dumps(worker.take())))
        assert worker.take() == {}  # a take clears
    assert master.rows() == whole.rows()
    ttft = next(row for row in whole.rows() if row["name"] == "TTFT")
    assert (ttft["count"], ttft["min"], ttft["p50"], ttft["p99"], ttft["max"]) == (
        200,
        1.0,
        100.0,
        198.0,
        200.0,
    )
    assert not math.isnan(ttft["mean"])


def test_an_unjudged_run_reads_as_running_until_its_verdict(webui: ModuleType) -> None:
    """The UI stops polling at the first state that is not running: "cleanup" or "stopping"
    must not be that answer while the verdict is still to come. A verdict with no requests
    (infinite percentiles) is still JSON a browser parses."""
    board = webui.Board()
    assert board.stats({"state": "ready"})["state"] == "ready"
    board.start()
    assert board.stats({"state": "stopping"})["state"] == "running"
    assert board.check_rows()[0]["value"] == "pending"
    assert board.verdict_json()["label"] is None
    board.judged(judge([], SETTINGS, start=0.0, stop=20.0), SETTINGS)
    assert board.stats({"state": "stopped"})["state"] == "stopped"
    assert board.check_rows()[0]["value"] == "INVALID"
    shown = json.loads(json.dumps(board.verdict_json(), allow_nan=False))
    assert shown["code"] == INVALID and shown["verdict"]["stats"]["ttft_p50_s"] is None
