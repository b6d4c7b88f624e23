"""The proof's ground truth: the cards' and the gateway's own /metrics histograms summarised
beside the client's figures, and the percentile intervals of the verdict."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.prove.fleet import free_ports, wait_ready
from gateway.prove.ground import Histogram, histogram
from loadtest.verdict import percentile_interval
from tests.process_harness import CARDINAL
from tests.test_loadtest import _card_totals
from tests.test_prove import _plan, _prove


def test_a_histograms_quantile_is_prometheus_histogram_quantile() -> None:
    """Linear within the bucket the rank falls in; the highest finite bound past it."""
    m = {
        "x_bucket": [({"le": "0.1", "m": "a"}, 2.0), ({"le": "0.2", "m": "a"}, 6.0)]
        + [({"le": "+Inf", "m": "a"}, 8.0), ({"le": "0.1", "m": "b"}, 2.0)]
        + [({"le": "0.2", "m": "b"}, 2.0), ({"le": "+Inf", "m": "b"}, 2.0)],
        "x_sum": [({"m": "a"}, 1.5), ({"m": "b"}, 0.1)],
        "x_count": [({"m": "a"}, 8.0), ({"m": "b"}, 2.0)],
    }
    h = histogram(m, "x")
    assert h == Histogram({0.1: 4.0, 0.2: 8.0, math.inf: 10.0}, 1.6, 10.0)
    assert h.quantile(0.2) == pytest.approx(0.05)  # rank 2 of the first 4, from 0
    assert h.quantile(0.6) == pytest.approx(0.15)  # rank 6: half way through (0.1, 0.2]
    assert h.quantile(0.95) == 0.2  # in +Inf: the highest finite bound
    before = Histogram({0.1: 4.0, 0.2: 4.0, math.inf: 4.0}, 0.2, 4.0)
    assert (h - before).quantile(0.5) == pytest.approx(0.175)  # rank 3 of the run's 4 in (0.1, 0.2]
    assert math.isnan(Histogram({math.inf: 0.0}, 0.0, 0.0).quantile(0.5))
    assert histogram(m, "y") is None


def test_a_percentiles_interval_holds_it_and_widens_with_fewer_values() -> None:
    values = [float(i) for i in range(1, 1001)]
    low, high = percentile_interval(values, 95)
    assert low < 950 < high and high - low < 40  # p95 of 1..1000 is 950
    few_low, few_high = percentile_interval(values[::10], 95)
    assert few_high - few_low > high - low
    assert percentile_interval(values[:100], 99.9)[1] == math.inf  # nothing above it to bound it


@pytest.fixture
def card(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """One simulated card of a 10 QPS plan that sends 4 tokens an event, started by the test."""
    plan = _plan(tmp_path, 10)
    port = free_ports(1)
    proc = subprocess.Popen(
        [str(CARDINAL), "sim", "--plan", str(plan), "--port", str(port)]
        + ["--tokens-per-event", "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/health", proc)
        yield plan, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_proof_reports_the_cards_own_histograms_beside_the_clients(
    card: tuple[Path, str],
) -> None:
    """`cardinal prove --backends` on a card the test reads itself: the report's card column is
    the card's own counters and histograms over the run, and the client's figures agree with
    them (ITL as the card counts it, TTFT, prompt tokens per request)."""
    plan, url = card
    before = _card_totals(url)
    run = _prove(plan, "--backends", url, "--duration", "15s", timeout=120)
    after = _card_totals(url)
    print(run.stdout[-4000:])
    assert run.returncode in (0, 1), run.stdout + run.stderr
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    summary = json.loads((plan.parent / "report" / "proof.summary.json").read_text())
    assert summary["schema"] == 1
    cards, client = summary["ground"]["cards"], summary["ground"]["client"]

    def hist(name: str) -> tuple[float, float]:
        return delta[f"vllm:{name}_seconds_count"], delta[f"vllm:{name}_seconds_sum"]

    for figure, name in (
        ("ttft", "time_to_first_token"),
        ("itl", "inter_token_latency"),
        ("e2e", "e2e_request_latency"),
    ):
        count, total = hist(name)
        assert cards[f"{figure}_count"] == count
        assert cards[f"{figure}_mean_s"] == pytest.approx(total / count, rel=1e-9)
    assert cards["prompt_tokens"] == delta["vllm:prompt_tokens_total"]
    assert cards["output_tokens"] == delta["vllm:generation_tokens_total"]

    with (plan.parent / "report" / "proof.records.csv").open() as f:
        done = [r for r in csv.DictReader(f) if not r["error"]]
    assert client["e2e_count"] == len(done) and client["e2e_count"] <= cards["e2e_count"]
    per_request = sum(int(r["prompt_tokens"]) for r in done) / len(done)
    assert per_request == pytest.approx(cards["prompt_tokens"] / cards["ttft_count"], rel=0.01)
    assert client["itl_mean_s"] == pytest.approx(cards["itl_mean_s"], rel=0.05)
    assert client["ttft_mean_s"] == pytest.approx(cards["ttft_mean_s"], abs=0.025)
    assert cards["ttft_p50_s"] <= cards["ttft_p95_s"] <= cards["ttft_p99_s"]
    # the gateway's own column: every request it timed, cut ones too; its tokens as it charged
    gw = summary["ground"]["gateway"]
    assert gw["ttft_count"] >= client["ttft_count"]
    assert gw["output_tokens"] >= client["output_tokens"]
    assert "measured over the whole run" in run.stdout
    page = (plan.parent / "report" / "index.html").read_text()
    assert "<th>ITL mean (per token gap)</th>" in page
    assert f"<td>{cards['itl_mean_s'] * 1e3:.1f} ms</td>" in page
