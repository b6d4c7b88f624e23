"""A simulated card whose event loop runs late voids the trial it was judged in, and only that:
a stall outside the judged window (while the processes start, in the warm-up) voids nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.prove.simlag import LagCount, judge_lag, lag_check, lag_count, lost_s
from tests.process_harness import SHORT_RUN, free_port

CARDINAL = Path(sys.executable).with_name("cardinal")
PLAN = [
    "--model", "deepseek-r1-distill-qwen-7b", "--quant", "awq", "--gpu", "a10g",
    "--prompt-tokens", "256", "--output-tokens", "32", "--ttft-slo", "1s", "--tpot-slo", "40ms",
    "--target-qps", "2",
]  # fmt: skip


def test_the_lag_metric_is_read_from_the_cards_histogram() -> None:
    bucket = "sim_event_loop_lag_seconds_bucket"
    m = {
        bucket: [({"le": "0.005"}, 90.0), ({"le": "0.01"}, 97.0), ({"le": "+Inf"}, 100.0)],
        "sim_event_loop_lag_seconds_count": [({}, 100.0)],
        "sim_event_loop_lag_seconds_sum": [({}, 0.25)],
    }
    assert lag_count(m) == LagCount(wakeups=100, late=3, lag_s=0.25)
    assert lag_count({"vllm:num_requests_running": [({}, 3.0)]}) is None  # not simulated


def test_only_the_wake_ups_around_the_judged_window_count() -> None:
    late_at_start = [
        (0.0, [LagCount(0, 0)]),
        (2.0, [LagCount(200, 50)]),  # a stall while the processes started
        (4.0, [LagCount(400, 50)]),
        (12.0, [LagCount(1200, 55)]),  # 5 late of 800 in the window: 0.6 %
        (14.0, [LagCount(1400, 60)]),
    ]
    check = lag_check(late_at_start, lo=5.0, hi=11.0)
    assert check is not None and check["ok"], check
    assert (check["value"], check["limit"]) == ("0.6%", "<= 1% wake-ups > 10 ms")
    late_inside = [*late_at_start[:3], (12.0, [LagCount(1200, 70)]), late_at_start[4]]
    check = lag_check(late_inside, lo=5.0, hi=11.0)
    assert check is not None and not check["ok"]
    assert check["value"] == "2.5%"
    stalled = [(0.0, [LagCount(0, 0)]), (20.0, [LagCount(0, 0)])]  # it never woke at all
    assert not lag_check(stalled, lo=5.0, hi=11.0)["ok"]  # type: ignore[index]
    assert lag_check([(0.0, [None]), (20.0, [None])], lo=5.0, hi=11.0) is None  # real engines


def _late_trial(code: int, completed_qps: float) -> dict:
    window = (4.0, 12.0)
    label = {0: "PASS", 1: "FAIL"}[code]
    return {"code": code, "label": label, "window": window, "validity": [],
            "offered_qps": 35.0, "completed_qps": completed_qps}  # fmt: skip


def test_a_late_loop_voids_what_it_could_explain_and_not_a_throughput_fail() -> None:
    """2 cards completing 25.7 of 35 QPS offered, 2.5 % of wake-ups late (CI, stop 28): given
    back the 0.7 s the worst card lost of 8 s, they complete at most 28.2 QPS of the 33.95 needed,
    so that FAIL stands. A PASS, a FAIL within reach of the limit, or a stalled card is INVALID."""
    at = [(3.0, [LagCount(0, 0, 0.1), LagCount(0, 0, 0.0)]),
          (13.0, [LagCount(1000, 25, 0.4), LagCount(1000, 25, 0.7)])]  # fmt: skip
    check = lag_check(at, lo=4.0, hi=12.0)
    assert check is not None and not check["ok"]
    assert lost_s(at, lo=4.0, hi=12.0) == 0.7
    cases = [(1, 25.7, 0.7, 1), (1, 25.7, 2.5, 2), (1, 32.0, 0.7, 2), (0, 35.0, 0.0, 2)]
    for code, completed, lost, expect in cases:
        table = f"Cardinal verdict: {_late_trial(code, 0)['label']} (exit {code})\n  generator CPU"
        got, out = judge_lag(check, code=code, verdict=_late_trial(code, completed), table=table,
                             lost_s=lost)  # fmt: skip
        assert got == expect, (code, completed, lost, out)
        assert ("FAIL stands" in out) == (expect == 1), out
        assert "simulator loop lag" in out
    assert (
        "at most 28.16 QPS, under the 33.95 needed"
        in judge_lag(check, code=1, verdict=_late_trial(1, 25.7), table="", lost_s=0.7)[1]
    )


@contextmanager
def _card(plan: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    argv = [str(CARDINAL), "sim", "--plan", str(plan), "--cards", "1", "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def _stall(pid: int, *, until: float, stop: threading.Event) -> None:
    """Freeze the process 30 ms in every 200 ms (5 late wake-ups a second of ~100) until then."""
    while not stop.is_set() and time.monotonic() < until:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.03)
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.17)


def _prove_stalled(tmp_path: Path, stall_s: float) -> subprocess.CompletedProcess[str]:
    plan = tmp_path / "fleet.yaml"
    subprocess.run([str(CARDINAL), "plan", *PLAN, "-o", str(plan)], check=True, capture_output=True)
    with _card(plan) as (card, url):
        time.sleep(1.5)  # it listens
        stop = threading.Event()
        staller = threading.Thread(
            target=_stall,
            args=(card.pid,),
            kwargs={"until": time.monotonic() + stall_s, "stop": stop},
        )
        staller.start()
        try:
            return subprocess.run(
                [str(CARDINAL), "prove", str(plan), "--backends", url, "--duration", "15s"],
                capture_output=True, text=True, timeout=120, cwd=tmp_path,
                env={**os.environ, **SHORT_RUN},
            )  # fmt: skip
        finally:
            stop.set()
            staller.join()


def test_a_card_stalled_in_the_judged_window_voids_the_trial(tmp_path: Path) -> None:
    run = _prove_stalled(tmp_path, stall_s=60)
    print(run.stdout)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "proof at 2.00 QPS on 1 card(s): INVALID" in run.stdout
    assert "Cardinal verdict: INVALID (exit 2)" in run.stdout
    assert "INVALID: a simulated card's event loop ran late in the judged window" in run.stdout
    assert re.search(r"  simulator loop lag +\d+\.\d% +<= 1% wake-ups > 10 ms +MISSED", run.stdout)


def test_a_card_stalled_only_before_the_window_is_judged(tmp_path: Path) -> None:
    # prove's own start, the gateway's and Locust's, then a warm-up of 4.6 s (2 x the e2e SLO)
    run = _prove_stalled(tmp_path, stall_s=2.5)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "proof at 2.00 QPS on 1 card(s): PASS" in run.stdout
    assert re.search(r"  simulator loop lag +\d\.\d% +<= 1% wake-ups > 10 ms +ok", run.stdout)
