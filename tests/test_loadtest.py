"""`locust -f loadtest/qps.py`: open-loop arrivals, real TTFT, and a verdict in the exit code.

Locust runs in its own processes (gevent stays out of pytest); the fleet is simulated cards from
one `cardinal sim` process, a card per scenario so that one run's backlog cannot leak into the next.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from gateway import planfile
from gateway.planner.capacity import Workload
from gateway.planner.catalog import load_catalog
from gateway.planner.plan import make_plan, request_for
from gateway.planner.report import plan_dict
from gateway.prove.fleet import free_ports, wait_ready
from loadtest.verdict import (
    FAIL,
    INVALID,
    PASS,
    Record,
    Settings,
    arrivals,
    attainment_interval,
    judge,
    lag_limit,
    min_requests,
    ramp_arrivals,
    render,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = "deepseek-r1-distill-qwen-7b"
WORKLOAD = Workload(
    prompt_tokens=256, output_tokens=64, target_qps=8, ttft_slo_s=1.0, tpot_slo_s=0.04
)
SETTINGS = Settings(
    target_qps=10,
    warmup_s=3,
    cooldown_s=0,
    ttft_slo_s=1.0,
    tpot_slo_s=0.05,
    e2e_slo_s=None,
    percentile=95,
    attainment=0.9,
    max_error_rate=0.01,
    min_window_s=5,  # the hand-made runs judge 7 s and 70 requests
    min_requests=50,
)
SHORT_RUN = ("--min-window", "2s", "--min-requests", "10")  # these real runs last seconds


# -- the verdict, on records made by hand ---------------------------------------------------------


def _records(n: int, *, rate: float, ttft: float, lag: float = 0.001, tokens: int = 64) -> list:
    out = []
    for i in range(n):
        t = i / rate
        out.append(
            Record(
                scheduled=t,
                sent=t + lag,
                first=t + ttft,
                end=t + ttft + 0.03 * (tokens - 1),
                tokens=tokens,
                finished=True,
            )
        )
    return out


def test_verdict_passes_fails_and_refuses_to_judge_a_slow_generator() -> None:
    ok = judge(_records(100, rate=10, ttft=0.2), SETTINGS, start=0, stop=10)
    assert ok.code == PASS and ok.offered_qps == pytest.approx(10, rel=0.02)
    slow = judge(_records(100, rate=10, ttft=1.5), SETTINGS, start=0, stop=10)
    assert slow.code == FAIL
    assert {c.name for c in slow.checks if not c.ok} == {"SLO attainment", "p95 TTFT"}
    lagging = judge(_records(100, rate=10, ttft=1.5, lag=0.2), SETTINGS, start=0, stop=10)
    assert lagging.code == INVALID  # the latencies measure the generator: no verdict on the fleet


def test_a_generator_slow_to_read_is_invalid_at_a_tight_slo_and_fine_at_a_loose_one() -> None:
    """The same 5 ms of loop lag: a noticeable share of a 10 ms TTFT SLO, not of a 1 s one."""
    tight = replace(SETTINGS, ttft_slo_s=0.010, tpot_slo_s=None)
    recs = _records(100, rate=10, ttft=0.004)
    lag = [(i / 100, 0.005) for i in range(1000)]  # a sample every 10 ms, each 5 ms late
    calm = [(t, 0.0004) for t, _ in lag]
    assert lag_limit(tight) == pytest.approx(0.002) and lag_limit(SETTINGS) == 0.05
    assert judge(recs, tight, start=0, stop=10, loop_lag=calm).code == PASS
    slow = judge(recs, tight, start=0, stop=10, loop_lag=lag)
    assert slow.code == INVALID
    assert [c.name for c in slow.validity if not c.ok] == ["generator loop lag p95"]
    assert judge(recs, SETTINGS, start=0, stop=10, loop_lag=lag).code == PASS
    # only the judged window's samples count: a stall in the warm-up (first 3 s) does not
    warm = [(t, 0.5 if t < SETTINGS.warmup_s else 0.0004) for t, _ in lag]
    assert judge(recs, tight, start=0, stop=10, loop_lag=warm).code == PASS
    assert judge(recs, tight, start=0, stop=10, loop_lag=[]).code == INVALID  # not sampled


def test_verdict_counts_errors_and_unfinished_requests_as_misses() -> None:
    recs = _records(100, rate=10, ttft=0.2)
    for r in recs[40:45]:
        r.error = "HTTP 500"
    for r in recs[45:50]:
        r.finished, r.end = False, math.nan
    v = judge(recs, SETTINGS, start=0, stop=10)
    assert v.code == FAIL and v.completed == v.scheduled - 10
    assert not next(c for c in v.checks if c.name == "error rate").ok


def test_a_short_run_is_invalid_for_too_short_a_window() -> None:
    """A 20 s run that judged 6.9 s and 83 requests printed PASS; with the default bounds (10 s,
    100 requests for p95) it is INVALID and says why."""
    defaults = replace(
        SETTINGS, target_qps=12, warmup_s=9, cooldown_s=4.1, min_window_s=10, min_requests=100
    )
    recs = _records(240, rate=12, ttft=0.2)
    v = judge(recs, defaults, start=0, stop=20)
    assert v.code == INVALID and (v.scheduled, round(v.window[1] - v.window[0], 1)) == (83, 6.9)
    assert {c.name for c in v.validity if not c.ok} == {"measurement window", "requests judged"}
    assert "INVALID: too little was judged to tell" in render(v, defaults)
    assert all(c.ok for c in v.checks)  # it would have passed
    longer = judge(_records(480, rate=12, ttft=0.2), defaults, start=0, stop=40)
    assert longer.code == PASS and longer.scheduled >= 100
    assert (min_requests(95), min_requests(99), min_requests(50)) == (100, 500, 20)


def test_the_attainment_figure_says_how_sure_it_is() -> None:
    low, high = attainment_interval(83, 83)
    assert (round(low, 3), high) == (0.956, 1.0)  # Wilson: 83 of 83 is >= 95.6 %, not 100 %
    low, high = attainment_interval(90, 100)
    assert (round(low, 3), round(high, 3)) == (0.826, 0.945)
    v = judge(_records(100, rate=10, ttft=0.2), SETTINGS, start=0, stop=10)
    assert "SLO attainment 95% interval 94.8%-100.0% over 70 requests" in render(v, SETTINGS)


def test_growing_queue_fails_even_when_latency_looks_fine() -> None:
    recs = _records(100, rate=10, ttft=0.2)
    for i, r in enumerate(recs):  # each request waits longer than the one before: a backlog
        r.first = r.scheduled + 0.1 + 0.009 * i  # TTFT 0.1 .. 1.0 s: p95 still within the SLO
        r.end = r.first + 0.03 * 63
    v = judge(recs, SETTINGS, start=0, stop=10)
    assert not next(c for c in v.checks if c.name == "queue not growing").ok


@pytest.mark.parametrize("rate", [0.5, 3, 75])
def test_poisson_arrivals_offer_the_rate_exactly_over_a_short_run(rate: float) -> None:
    stream = arrivals(rate, start=0, seed=1)
    horizon = max(40 / rate, 20)
    times = []
    while (t := next(stream)) < horizon:
        times.append(t)
    assert len(times) == pytest.approx(rate * horizon, rel=0.03)
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    assert gaps[len(gaps) // 10] < 0.35 / rate < gaps[-len(gaps) // 10]  # bursty, not a metronome


@pytest.mark.parametrize("cv", [1.0, 3.0])
def test_gamma_arrivals_are_as_bursty_as_asked_and_keep_the_rate(cv: float) -> None:
    rate, horizon = 50.0, 400.0
    stream = arrivals(rate, start=0, seed=3, kind="gamma", cv=cv)
    times = []
    while (t := next(stream)) < horizon:
        times.append(t)
    assert len(times) == pytest.approx(rate * horizon, rel=0.01)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    mean = sum(gaps) / len(gaps)
    spread = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean
    print(f"cv {cv}: the gaps' measured cv {spread:.2f}")
    assert spread == pytest.approx(cv, rel=0.1)


def test_a_ramp_rises_linearly_then_offers_the_rate_exactly() -> None:
    """--ramp 10s at 20 QPS: 25 arrivals in the first 5 s (20 x 5^2 / 20), 100 in the ramp, and
    the window after it holds the rate to within one request."""
    counts = {"first half": [], "ramp": [], "window": []}
    for seed in range(20):
        stream = ramp_arrivals(20.0, ramp_s=10.0, start=0.0, seed=seed, edges=(10.0, 40.0))
        times = list(itertools.takewhile(lambda t: t < 40.0, stream))
        counts["first half"].append(sum(t < 5 for t in times))
        counts["ramp"].append(sum(t < 10 for t in times))
        counts["window"].append(sum(t >= 10 for t in times))
    assert sum(counts["first half"]) / 20 == pytest.approx(25, rel=0.1)
    assert sum(counts["ramp"]) / 20 == pytest.approx(100, abs=1)
    assert all(abs(n - 600) <= 1 for n in counts["window"])


@pytest.mark.parametrize("rate", [1.5, 500])
def test_the_judged_window_offers_the_target_at_any_rate(rate: float) -> None:
    """Window edges that cut the blocks (at 1.5 QPS a block is 13.3 s): the window still holds
    the target rate to within one request a driver, and within 2 %."""
    lo, hi = 3.3, 3.3 + max(40.0, 60 / rate) + 0.37
    for seed in range(20):
        stream = arrivals(rate, start=100.0, seed=seed, edges=(lo, hi))
        n = 0
        while (t := next(stream) - 100.0) < hi:
            n += lo <= t
        assert abs(n - rate * (hi - lo)) <= 1
        assert n / (hi - lo) == pytest.approx(rate, rel=0.02)


# -- the locustfile against real servers ----------------------------------------------------------


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    catalog = load_catalog()
    plan = make_plan(
        request_for(catalog, model=MODEL, quant="awq", gpu="a10g", workload=WORKLOAD), catalog
    )
    path = tmp_path_factory.mktemp("plan") / "fleet.yaml"
    path.write_text(planfile.dump(plan_dict(plan)))
    return path


@pytest.fixture(scope="module")
def cards(plan_path: Path) -> Iterator[list[str]]:
    n = 5
    port = free_ports(n)
    proc = subprocess.Popen(
        [str(BIN / "cardinal"), "sim", "--plan", str(plan_path), "--cards", str(n)]
        + ["--port", str(port), "--tokens-per-event", "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    urls = [f"http://127.0.0.1:{port + i}" for i in range(n)]
    try:
        wait_ready(urls[-1] + "/health", proc)
        yield urls
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def _locust(
    *args: str, seconds: int, env: dict[str, str] | None = None, locustfile: str = ""
) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "locust"), "-f", locustfile or "loadtest/qps.py", "--headless"]
    cmd += ["-t", f"{seconds}s", "--only-summary", *args]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, **(env or {})},
    )


def _summary(path: Path) -> dict:
    return json.loads(path.read_text())["verdict"]


def test_a_fleet_that_keeps_up_passes(cards: list[str], plan_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    run = _locust(
        "--host", cards[0], "--plan", str(plan_path), "--warmup", "3s", "--cooldown", "4s",
        "--summary-json", str(out), *SHORT_RUN, seconds=14,
    )  # fmt: skip
    print(run.stdout[-1500:])
    assert run.returncode == PASS, run.stdout + run.stderr
    v = _summary(out)
    assert v["completed_qps"] == pytest.approx(WORKLOAD.target_qps, rel=0.05)
    assert v["window"][1] == pytest.approx(14 - 4, abs=0.25)  # -t counts from the first request
    assert v["offered_qps"] == pytest.approx(WORKLOAD.target_qps, rel=0.02)  # whole blocks


def _card_totals(url: str) -> dict[str, float]:
    """A card's own counters and histograms (sums and counts), from its /metrics."""
    from urllib.request import urlopen  # noqa: PLC0415

    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    with urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def test_the_figures_other_tools_report_agree_with_the_cards_own(
    cards: list[str], plan_path: Path, tmp_path: Path
) -> None:
    """Tokens a second, time to second token and the count warning, against the card's own
    counters and histograms (a card that sends 4 tokens an event)."""
    out, records = tmp_path / "s.json", tmp_path / "records.csv"
    card = cards[1]
    before = _card_totals(card)
    run = _locust(
        "--host", card, "--plan", str(plan_path), "--warmup", "0s", "--cooldown", "0s",
        "--summary-json", str(out), "--records-csv", str(records), *SHORT_RUN, seconds=8,
    )  # fmt: skip
    time.sleep(0.5)  # what was in flight at the end finishes on the card
    after = _card_totals(card)
    print(run.stdout[-2500:])
    v = _summary(out)
    st = v["stats"]
    with records.open() as f:
        rows = [row for row in csv.DictReader(f) if not row["error"]]
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    generated, prompted = delta["vllm:generation_tokens_total"], delta["vllm:prompt_tokens_total"]
    served = sum(int(r["tokens"]) for r in rows)
    prompts = sum(int(r["prompt_tokens"]) for r in rows)
    # per request: the card's counters also hold requests cut when the run stopped
    started = delta["vllm:time_to_first_token_seconds_count"]
    finished = delta["vllm:e2e_request_latency_seconds_count"]
    print(
        f"    client {len(rows)} requests, {served} / {prompts} tokens; card {started:g} "
        f"started, {finished:g} finished, {generated:g} / {prompted:g} tokens"
    )
    assert prompts / len(rows) == pytest.approx(prompted / started, rel=0.01)
    assert served / len(rows) == pytest.approx(generated / finished, rel=0.1)
    span = v["window"][1] - v["window"][0]
    assert st["output_tokens_per_s"] == pytest.approx(served / span, rel=0.05)
    assert st["input_tokens_per_s"] == pytest.approx(prompts / span, rel=0.05)
    # the second content delta comes 4 tokens after the first: 4 inter-token gaps
    itl = (
        delta["vllm:inter_token_latency_seconds_sum"]
        / delta["vllm:inter_token_latency_seconds_count"]
    )
    assert st["ttst_p50_s"] == pytest.approx(4 * itl, rel=0.35)
    ttft = (
        delta["vllm:time_to_first_token_seconds_sum"]
        / delta["vllm:time_to_first_token_seconds_count"]
    )
    client_ttft = sum(float(r["ttft_s"]) for r in rows) / len(rows)
    assert client_ttft == pytest.approx(ttft, abs=0.015)
    assert st["per_user_tokens_per_s_p50"] == pytest.approx(1 / itl, rel=0.35)
    assert st["client_count_mismatch"] > 0.5 and "warning: the content deltas" in run.stdout
    assert "p99.9" in run.stdout and st["goodput_qps"] <= v["completed_qps"]


def test_ctrl_c_stops_the_run_with_no_verdict(
    cards: list[str], plan_path: Path, tmp_path: Path
) -> None:
    """SIGINT mid-run, Locust started as a background job is (SIGINT ignored): out within 5 s,
    exit 130, no verdict printed, no summary written."""
    out = tmp_path / "s.json"
    cmd = [str(BIN / "locust"), "-f", "loadtest/qps.py", "--headless", "-t", "60s"]
    cmd += ["--host", cards[0], "--plan", str(plan_path), "--summary-json", str(out)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    time.sleep(6)  # the users are sending by now
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert took < 5, f"took {took:.1f} s"
    assert "interrupted: no verdict" in stderr
    assert "Cardinal verdict" not in stdout and not out.exists()


def test_open_loop_holds_the_rate_where_closed_loop_falls_behind(
    cards: list[str], plan_path: Path, tmp_path: Path
) -> None:
    """1.6x the card's capacity: latency grows without bound. qps.py still offers the target
    (and fails the fleet); stock constant_throughput users wait for answers and fall behind."""
    target = 20.0
    out = tmp_path / "s.json"
    run = _locust(
        "--host", cards[1], "--plan", str(plan_path), "--target-qps", str(target),
        "--warmup", "2s", "--cooldown", "3s", "--summary-json", str(out), *SHORT_RUN,
        seconds=15,
    )  # fmt: skip
    print(run.stdout[-1500:])
    assert run.returncode == FAIL, run.stdout + run.stderr
    v = _summary(out)
    assert v["sent_qps"] == pytest.approx(target, rel=0.03)
    assert v["completed_qps"] < 0.8 * target

    users = 20
    closed = _locust(
        "--host", cards[2], "-u", str(users), "-r", str(users), "--json",
        seconds=15,
        locustfile=str(ROOT / "tests/data/closed_loop.py"),
        env={"CLOSED_LOOP_RATE_PER_USER": str(target / users), "CLOSED_LOOP_MODEL": MODEL},
    )  # fmt: skip
    stats = json.loads(closed.stdout)
    achieved = sum(s["num_requests"] for s in stats) / 15
    print(f"open loop sent {v['sent_qps']:.2f} QPS; closed loop sent {achieved:.2f} QPS")
    assert achieved < 0.85 * target


def test_a_starved_generator_is_invalid_not_failed(cards: list[str], plan_path: Path) -> None:
    run = _locust(
        "--host", cards[3], "--plan", str(plan_path), "--target-qps", "3000",
        "--warmup", "1s", "--cooldown", "1s", seconds=6,
    )  # fmt: skip
    print(run.stdout[-1500:])
    assert run.returncode == INVALID, run.stdout + run.stderr
    assert "INVALID" in run.stdout


def test_distributed_run_gives_one_verdict(
    cards: list[str], plan_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.json"
    base = [str(BIN / "locust"), "-f", "loadtest/qps.py"]
    workers = [
        subprocess.Popen(
            [*base, "--worker"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(2)
    ]
    try:
        run = _locust(
            "--master", "--expect-workers", "2", "-u", "2", "-r", "2", "--host", cards[4],
            "--plan", str(plan_path), "--warmup", "3s", "--cooldown", "4s",
            "--summary-json", str(out), *SHORT_RUN, seconds=14,
        )  # fmt: skip
    finally:
        for w in workers:
            w.wait(timeout=30)
    print(run.stdout[-1500:])
    assert run.returncode == PASS, run.stdout + run.stderr
    assert _summary(out)["sent_qps"] == pytest.approx(WORKLOAD.target_qps, rel=0.05)


def test_bad_options_name_the_flag(plan_path: Path) -> None:
    for args, flag in (
        (["--plan", str(plan_path), "--target-qps", "-1"], "--target-qps"),
        (["--plan", str(plan_path), "--ttft-slo", "soon"], "--ttft-slo"),
        (["--plan", str(plan_path), "--tpot-slo", "50"], "--tpot-slo"),  # 50 ms or 50 s?
        (["--model", "m", "--target-qps", "1"], "--ttft-slo"),
        (["--plan", "missing.yaml"], "--plan"),
        (["--plan", str(plan_path), "--arrival", "bursty"], "--arrival"),
        (["--plan", str(plan_path), "--arrival", "gamma:cv=0"], "--arrival"),
        (["--plan", str(plan_path), "--shared-prefix", "5000"], "--shared-prefix"),
        (["--plan", str(plan_path), "--concurrency", "3", "-u", "2"], "--concurrency"),
        (["--plan", str(plan_path), "--trace", "missing.csv"], "--trace"),
        (["--plan", str(plan_path), "--ramp", "30s", "--warmup", "10s"], "--ramp"),
        (["--plan", str(plan_path), "--ramp", "30s", "--concurrency", "2"], "--ramp"),
        (["--plan", str(plan_path), "--trace-speed", "2"], "--trace-speed"),
        (["--plan", str(plan_path), "--concurrency", "4", "--target-qps", "2"], "--concurrency"),
    ):
        run = _locust("--host", "http://127.0.0.1:9", *args, seconds=5)
        assert run.returncode == 2, run.stderr
        assert f"error: {flag}:" in run.stderr, run.stderr


# -- TTFT is the first content token, not the headers ---------------------------------------------

PREFILL_S = 0.3


async def _slow_prefill(request: web.Request) -> web.StreamResponse:
    """Headers and a role chunk at once, the first content token PREFILL_S later."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def send(payload: dict) -> None:
        await resp.write(b"data: " + json.dumps(payload).encode() + b"\n\n")

    await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    await asyncio.sleep(PREFILL_S)
    for _ in range(10):
        await send({"choices": [{"index": 0, "delta": {"content": "tok"}}]})
        await asyncio.sleep(0.01)
    await send({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 10}})
    await resp.write(b"data: [DONE]\n\n")
    return resp


@pytest.mark.asyncio
async def test_ttft_is_timed_at_the_first_content_token(tmp_path: Path) -> None:
    records = tmp_path / "records.csv"
    async with _card_url(_slow_prefill) as url:
        v = await _locust_summary(
            tmp_path / "s.json", "--host", url, "-t", "6s", "--target-qps", "5",
            "--ttft-slo", "1s", "--warmup", "0s", "--cooldown", "1s",
            "--records-csv", str(records), *SHORT_RUN,
        )  # fmt: skip
    assert v["code"] == PASS, v
    with records.open() as f:
        ttfts = sorted(float(row["ttft_s"]) for row in csv.DictReader(f) if not row["error"])
    median = ttfts[len(ttfts) // 2]
    print(
        f"{len(ttfts)} requests, TTFT median {median * 1e3:.1f} ms "
        f"for a {PREFILL_S * 1e3:.0f} ms prefill"
    )
    assert len(ttfts) >= 20
    assert PREFILL_S <= median <= PREFILL_S + 0.010


# -- a generator too slow to read its answers: INVALID, not FAIL ----------------------------------

FAST_PREFILL_S = 0.003
CLOSED_LOOP_S = 0.05  # the closed-loop card's wait before it answers as the fast card


async def _fast_card(request: web.Request) -> web.StreamResponse:
    """A card of known speed: the first token FAST_PREFILL_S after the request, then 4 more."""
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(FAST_PREFILL_S)
    for _ in range(5):
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n')
    await resp.write(b"data: [DONE]\n\n")
    return resp


@pytest.mark.asyncio
async def test_a_shared_prefix_starts_every_prompt_and_keeps_its_length(tmp_path: Path) -> None:
    """--shared-prefix 100 of 300 prompt tokens: one system message of 100 tokens (as the sim
    counts them, its template included) on every request, each prompt still 300 tokens long."""
    from gateway.sim.prompt import chat_tokens  # noqa: PLC0415

    bodies: list[dict] = []

    async def card(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        return await _fast_card(request)

    async with _card_url(card) as url:
        await _locust_summary(
            tmp_path / "prefix.json", "--host", url, "-t", "4s", "--target-qps", "10",
            "--ttft-slo", "1s", "--prompt-tokens", "300", "--shared-prefix", "100",
            "--arrival", "gamma:cv=2", *SHORT_RUN,
        )  # fmt: skip
    assert len(bodies) > 20
    systems = {json.dumps(b["messages"][0]) for b in bodies}
    assert len(systems) == 1 and bodies[0]["messages"][0]["role"] == "system"
    assert chat_tokens(bodies[0]["messages"][:1]) - 3 == 100  # less the reply header
    assert {chat_tokens(b["messages"]) for b in bodies} == {300}
    assert len({b["messages"][1]["content"] for b in bodies}) == len(bodies)


@pytest.mark.asyncio
async def test_a_closed_loop_keeps_its_concurrency_and_says_it_offered_no_rate(
    tmp_path: Path,
) -> None:
    """--concurrency 4 over 2 users: the card never holds more than 4, the rate is what 4 in
    flight complete, and no check judges an offered rate."""
    running, seen = 0, []

    async def card(request: web.Request) -> web.StreamResponse:
        nonlocal running
        running += 1
        seen.append(running)
        try:
            await asyncio.sleep(CLOSED_LOOP_S)
            return await _fast_card(request)
        finally:
            running -= 1

    async with _card_url(card) as url:
        v = await _locust_summary(
            tmp_path / "closed.json", "--host", url, "-t", "5s", "-u", "2", "-r", "2",
            "--concurrency", "4", "--ttft-slo", "1s", "--warmup", "1s", "--cooldown", "1s",
            *SHORT_RUN,
        )  # fmt: skip
    assert max(seen) == 4  # never more in flight; never fewer: the rate below is 4 at a time
    e2e = CLOSED_LOOP_S + FAST_PREFILL_S  # the card's own time per request
    assert v["completed_qps"] == pytest.approx(4 / e2e, rel=0.3)
    names = {c["name"] for c in v["checks"] + v["validity"]}
    open_loop = {"offered QPS", "completed QPS", "requests sent on time", "queue not growing"}
    assert not names & open_loop
    assert {"p95 TTFT", "SLO attainment", "error rate"} <= names


@pytest.mark.asyncio
async def test_a_trace_is_replayed_at_its_times_with_its_lengths(tmp_path: Path) -> None:
    """A JSONL trace of 30 arrivals in bursts, replayed twice as fast: the card gets each
    request at the trace's time (scaled) with the trace's prompt length and max_tokens."""
    from gateway.sim.prompt import chat_tokens  # noqa: PLC0415

    rng = random.Random(5)
    t, rows = 0.0, []
    for i in range(30):
        t += 0.02 if i % 10 else 1.0  # a burst of 10 every second
        rows.append({"t": round(t, 3), "prompt_tokens": rng.randrange(20, 400),
                     "output_tokens": rng.randrange(1, 6)})  # fmt: skip
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got: list[tuple[float, dict]] = []

    async def card(request: web.Request) -> web.StreamResponse:
        got.append((time.time(), await request.json()))
        return await _fast_card(request)

    async with _card_url(card) as url:
        v = await _locust_summary(
            tmp_path / "trace.json", "--host", url, "-t", "2s", "--trace", str(trace),
            "--trace-speed", "2", "--ttft-slo", "1s", "--warmup", "0s", "--cooldown", "0s",
            *SHORT_RUN,
        )  # fmt: skip
    first = got[0][0]
    span = rows[-1]["t"] - rows[0]["t"]
    period = span + span / (len(rows) - 1)  # at its end the trace starts again one mean gap on
    due = [(r["t"] - rows[0]["t"] + lap * period) / 2 for lap in (0, 1) for r in rows]
    assert 30 < len(got) < 60  # 2 s at twice the speed: one lap of 1.2 s, then part of a second
    for (at, body), row, t in zip(got, rows + rows, due, strict=False):
        assert chat_tokens(body["messages"]) == row["prompt_tokens"]
        assert body["max_tokens"] == row["output_tokens"]
        assert at - first == pytest.approx(t, abs=0.05)
    assert v["offered_qps"] > 0 and "offered QPS" not in {c["name"] for c in v["validity"]}


@asynccontextmanager
async def _card_url(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A card on this test's loop, answering /v1/chat/completions with `handler`."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def _locust_summary(
    path: Path, *args: str, locustfile: str = "loadtest/qps.py", env: dict[str, str] | None = None
) -> dict:
    """A headless run in its own process (the card stays on this test's loop); its verdict."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "locust"), "-f", locustfile, "--headless", "--only-summary",
        "--model", "m", "--summary-json", str(path), *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
    print(stdout.decode()[-1800:])
    assert path.exists(), stderr.decode()[-2000:]
    verdict = _summary(path)
    assert proc.returncode == verdict["code"]
    return verdict


def _missed(v: dict, key: str) -> set[str]:
    return {c["name"] for c in v[key] if not c["ok"]}


@pytest.mark.asyncio
async def test_a_starved_reader_at_a_tight_slo_is_invalid_not_failed(tmp_path: Path) -> None:
    """The same fast card (3 ms to the first token), a 30 ms TTFT SLO (calm p95: 6 ms here, 12 ms
    on a busy CI machine): PASS with the generator to itself; with a hog holding the generator's
    loop 40 ms at a time, its TTFTs miss the SLO, and the verdict is INVALID for the generator's
    loop lag instead of a FAIL on the card."""
    locustfile = str(ROOT / "tests/data/starved_generator.py")
    async with _card_url(_fast_card) as url:

        async def run(spin_ms: int) -> dict:
            return await _locust_summary(
                tmp_path / f"spin{spin_ms}.json", "--host", url, "-t", "9s",
                "--target-qps", "20", "--ttft-slo", "30ms", "--warmup", "1s", "--cooldown", "1s",
                *SHORT_RUN, locustfile=locustfile,
                env={"HOG_SPIN_MS": str(spin_ms), "HOG_GAP_MS": "5"},
            )  # fmt: skip

        calm = await run(0)
        starved = await run(40)
    assert calm["code"] == PASS, calm
    assert starved["code"] == INVALID
    assert "generator loop lag p95" in _missed(starved, "validity")
    assert "p95 TTFT" in _missed(starved, "checks")  # judged on the card, this would be a FAIL


@pytest.mark.asyncio
async def test_a_20s_run_is_invalid_for_too_short_a_window(tmp_path: Path) -> None:
    """The run that printed PASS on 6.9 s and 83 requests, with the default bounds."""
    async with _card_url(_fast_card) as url:
        v = await _locust_summary(
            tmp_path / "short.json", "--host", url, "-t", "20s", "--target-qps", "12",
            "--ttft-slo", "1s", "--warmup", "9s", "--cooldown", "4s",
        )  # fmt: skip
    assert v["code"] == INVALID
    assert _missed(v, "validity") == {"measurement window", "requests judged"}
    assert not _missed(v, "checks")  # the card kept up: only the bounds stop a PASS
