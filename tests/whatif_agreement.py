"""`cardinal whatif` against `cardinal prove` on the same plan, 4 cards, trace and routing: the
virtual-time run and the real-time one (simulated cards behind the real gateway, Locust replaying
the trace), request by request over the trace's first lap. Used by tests/test_whatif_prove.py
(the bounds) and `make bench` (the figures)."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtest.verdict import percentile

CARDINAL = Path(sys.executable).with_name("cardinal")
PLAN = [
    "--model", "deepseek-r1-distill-qwen-7b", "--quant", "awq", "--gpu", "l4",
    "--engine", "vllm", "--target-qps", "15", "--prompt-tokens", "512", "--output-tokens", "128",
    "--ttft-slo", "2s", "--tpot-slo", "50ms", "--headroom", "10%",
]  # fmt: skip
CARDS = 4
QPS = 10.0  # the trace replayed at this mean rate: busy cards, a short gateway queue at bursts
SPAN_S = 25.0  # of arrivals
RUN_S = 45  # the longest answer ends within 20 s of the last arrival
# Round robin routes request i to the same card in both runs, so they are the same run. The
# policies that read load (least outstanding, engine-aware) route on ties broken at random and on
# scrapes taken at other instants: on 4 cards and 250 requests their p95 TTFT moves by 30 % from
# one seed to the next in virtual time alone (docs/whatif.md), more than any bound worth testing.
POLICY = "round_robin"


@dataclass(frozen=True)
class Agreement:
    requests: int  # in the trace's first lap
    completed_prove: int
    completed_whatif: int
    figures: dict[str, tuple[float, float]]  # "ttft_s p50" -> (prove, whatif)

    def lines(self) -> list[str]:
        out = [
            f"{CARDS} cards, {self.requests} requests: completed {self.completed_prove} (prove) "
            f"and {self.completed_whatif} (whatif)"
        ]
        for name, (a, b) in self.figures.items():
            out.append(f"{name}: prove {a * 1e3:.1f} ms, whatif {b * 1e3:.1f} ms, {b / a - 1:+.1%}")
        return out

    @property
    def worst(self) -> float:
        return max(abs(b / a - 1) for a, b in self.figures.values())


def _trace(path: Path) -> list[dict[str, float]]:
    rng = random.Random(7)
    t, rows = 0.0, []
    while True:
        t += rng.expovariate(QPS)
        if t > SPAN_S:
            break
        rows.append({"t": round(t, 4), "prompt_tokens": rng.randint(60, 1500),
                     "output_tokens": rng.randint(16, 200)})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def measure(directory: Path) -> Agreement:
    plan, trace = directory / "fleet.yaml", directory / "trace.jsonl"
    subprocess.run([str(CARDINAL), "plan", *PLAN, "-o", str(plan)], check=True, capture_output=True)
    rows = _trace(trace)
    common = [str(plan), "--cards", str(CARDS), "--trace", str(trace), "--target-qps", f"{QPS:g}"]
    common += ["--policy", POLICY, "--duration", f"{RUN_S}s"]
    proof = subprocess.run(
        [str(CARDINAL), "prove", *common, "--report", str(directory / "prove")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    records = directory / "prove" / "proof.records.csv"
    if not records.exists():
        raise RuntimeError(f"prove wrote no records:\n{proof.stdout}\n{proof.stderr}")
    virtual_csv = directory / "whatif.csv"
    whatif = subprocess.run(
        [str(CARDINAL), "whatif", *common, "--records-csv", str(virtual_csv)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if whatif.returncode != 0:
        raise RuntimeError(f"whatif failed:\n{whatif.stderr}")
    # the trace's first lap as both scaled it (its mean rate: n - 1 gaps over its span)
    span = rows[-1]["t"] - rows[0]["t"]
    lap = span / (QPS / ((len(rows) - 1) / span)) + 1e-6
    real = [r for r in _rows(records) if float(r["scheduled_s"]) <= lap]
    virtual = [r for r in _rows(virtual_csv) if float(r["t"]) <= lap]
    if not len(real) == len(virtual) == len(rows):
        raise RuntimeError(f"first lap: {len(real)} (prove), {len(virtual)} (whatif), {len(rows)}")
    real_done = [r for r in real if not r["error"]]
    virtual_done = [r for r in virtual if not r["error"]]
    figures = {}
    for name in ("ttft_s", "tpot_s"):
        for p in (50, 95):
            figures[f"{name[:4].upper()} p{p}"] = (
                percentile([float(r[name]) for r in real_done], p),
                percentile([float(r[name]) for r in virtual_done], p),
            )
    return Agreement(len(rows), len(real_done), len(virtual_done), figures)
