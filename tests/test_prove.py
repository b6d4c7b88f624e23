"""`cardinal prove`: a plan's N simulated cards pass at its target and N - 1 fail; a rate sweep
finds the per-card capacity the plan promised."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
    return subprocess.run(
        [str(CARDINAL), "prove", str(plan), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=plan.parent,
    )


def test_plan_passes_with_its_cards_and_fails_with_one_fewer(tmp_path: Path) -> None:
    plan = _plan(tmp_path, 35)  # 3 cards of 13.0 QPS: 90 % busy; 2 cards are 26 % short
    run = _prove(plan, "--check-minimal", "--duration", "15s", timeout=240)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "proof at 35.00 QPS on 3 card(s): PASS" in run.stdout
    assert "minus-one at 35.00 QPS on 2 card(s): FAIL" in run.stdout
    assert "neither short nor padded" in run.stdout
    assert "binding constraint: " in run.stdout
    report = tmp_path / "report"
    for name in ("index.html", "qps.png", "latency.png", "cards.png", "proof.records.csv"):
        assert (report / name).stat().st_size > 0, name


def test_sweep_finds_the_plans_per_card_capacity(tmp_path: Path) -> None:
    plan = _plan(tmp_path, 10)
    run = _prove(plan, "--cards", "1", "--sweep", "--duration", "15s", timeout=400)
    print(run.stdout)
    m = re.search(r"= ([0-9.]+) QPS per card; the plan says ([0-9.]+) per replica", run.stdout)
    assert m, run.stdout + run.stderr
    measured, planned = float(m.group(1)), float(m.group(2))
    assert abs(measured / planned - 1) <= 0.15
    assert (tmp_path / "report" / "sweep.png").exists()
