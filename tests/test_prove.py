"""`cardinal prove`: a rate sweep finds the per-card capacity the plan promised; interrupts,
reports and the sweep's edges. (A plan's N cards passing and N - 1 failing, with the report that
explains the failure: tests/test_prove_report.py.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.prove.proof import SweepVoid, highest_passing, search_rate
from gateway.prove.trial import Trial
from tests.process_harness import judged

CARDINAL = Path(sys.executable).with_name("cardinal")
PLAN = [
    "--model", "deepseek-r1-distill-qwen-7b", "--quant", "awq", "--gpu", "a10g",
    "--prompt-tokens", "256", "--output-tokens", "32", "--ttft-slo", "1s", "--tpot-slo", "40ms",
    "--headroom", "10%",
]  # fmt: skip


def _plan(tmp_path: Path, qps: float) -> Path:
    path = tmp_path / "fleet.yaml"
    subprocess.run(
        [str(CARDINAL), "plan", *PLAN, "--target-qps", str(qps), "-o", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _prove(plan: Path, *args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    return judged(plan, *args, timeout=timeout)


def test_sweep_finds_the_plans_per_card_capacity(tmp_path: Path) -> None:
    plan = _plan(tmp_path, 10)
    run = _prove(plan, "--cards", "1", "--sweep", "--duration", "15s", timeout=400)
    print(run.stdout)
    m = re.search(r"= ([0-9.]+) QPS per card; the plan says ([0-9.]+) per replica", run.stdout)
    assert m, run.stdout + run.stderr
    measured, planned = float(m.group(1)), float(m.group(2))
    assert abs(measured / planned - 1) <= 0.15
    assert (tmp_path / "report" / "sweep.png").exists()


def test_a_reused_report_does_not_carry_the_last_runs_warnings(tmp_path: Path) -> None:
    from gateway.prove.fleet import process

    log = tmp_path / "sim-0.log"
    log.write_text("cardinal sim: WARNING: ... falling behind real time ...\n")
    with process([sys.executable, "-c", "print('serving')"], log=log) as proc:
        proc.wait(timeout=30)
    assert log.read_text() == "serving\n"


def _descendants(pid: int) -> list[int]:
    """Every process under `pid`, from /proc (children of children included)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("to", ["group", "prove"])
def test_an_interrupted_proof_stops_at_once_with_no_verdict(tmp_path: Path, to: str) -> None:
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) or SIGINT to prove alone,
    mid-run: exit 130 within 5 s, every card, gateway and Locust stopped, no verdict printed or
    written. Prove starts as a background job does, SIGINT ignored, and must still hear it."""
    plan = _plan(tmp_path, 35)
    proc = subprocess.Popen(
        [str(CARDINAL), "prove", str(plan), "--duration", "60s"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # the load is running once progress is printed
        if " done " in line:
            break
    children = _descendants(proc.pid)
    assert len(children) >= 3  # cards, the gateway, Locust
    t0 = time.monotonic()
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 130, out + err
    assert took < 5, f"took {took:.1f} s to stop"
    assert "interrupted: no verdict" in err
    assert "Cardinal verdict" not in out and "PASS" not in out and "FAIL" not in out
    assert not (tmp_path / "report" / "index.html").exists()
    assert not [c for c in children if _alive(c)], "processes left running"


def test_cards_that_disagree_with_the_backends_are_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path, 2)
    run = _prove(plan, "--cards", "3", "--backends", "http://127.0.0.1:9", timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "cardinal prove: error: --cards: 3 cards but 1 --backends: give one or the other, or as "
        "many backends as cards"
    )
    assert not (tmp_path / "report").exists()  # refused before anything ran


@pytest.mark.parametrize(
    ("urls", "says"),
    [
        (
            ["http://127.0.0.1:9,http://127.0.0.1:10"],
            "holds a comma: give each URL as its own word",
        ),
        (["127.0.0.1:9"], "is not a URL like http://127.0.0.1:8000"),
        (["http://127.0.0.1:port"], "has a port that is not a number"),
    ],
)
def test_a_backend_that_is_not_one_url_is_refused(tmp_path: Path, urls: list, says: str) -> None:
    """Comma-separated backends were taken as one URL: "no slot count published", then 60 s of
    waiting for a gateway that could not start."""
    plan = _plan(tmp_path, 2)
    run = _prove(plan, "--backends", *urls, timeout=60)
    assert run.returncode == 2
    assert run.stderr.startswith("cardinal prove: error: argument --backends: "), run.stderr
    assert says in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "report").exists()


def _trial(qps: float, code: int) -> Trial:
    return Trial(name=f"t-{qps:.2f}", target_qps=qps, cards=1, code=code, verdict={},
                 settings={}, records_csv=Path("r.csv"), table="")  # fmt: skip


def test_an_invalid_sweep_trial_is_run_again_not_read_as_a_fail() -> None:
    """Capacity 10 QPS; the first trial at 10 QPS is INVALID (the generator fell behind): it is
    run again, and the sweep finds the same capacity as without it."""
    invalid_once = {10.0}

    def run(q: float) -> Trial:
        if round(q, 6) in invalid_once:
            invalid_once.discard(round(q, 6))
            return _trial(q, 2)
        return _trial(q, 0 if q <= 10 else 1)

    clean = search_rate(lambda q: _trial(q, 0 if q <= 10 else 1), 8.0)
    trials = search_rate(run, 8.0)
    assert [t.code for t in trials if round(t.target_qps, 6) == 10.0] == [2, 0]
    assert highest_passing(trials) == highest_passing(clean) > 9


def test_a_rate_invalid_twice_voids_the_sweep() -> None:
    with pytest.raises(SweepVoid, match="trial at 12.50 QPS was INVALID twice"):
        search_rate(lambda q: _trial(q, 2 if q > 11 else 0), 8.0)
