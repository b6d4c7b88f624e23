"""`make bench`: how fast `cardinal whatif` runs virtual time, and how well it agrees with
`cardinal prove` in real time.

- 100 cards at 1,000 QPS in one process (one gateway), and the same run with every engine step
  taken on its own, to show what advancing from event to event buys;
- 1,000 cards at 10,000 QPS, in one process (one gateway over all of them) and in shards (cells
  of 100 cards, one gateway each, over this machine's cores);
- the agreement of tests/whatif_agreement.py (4 cards, the same trace in both).

The fleet: Llama 3.1 8B FP8 on A100 80GB SXM, 512 prompt and 128 output tokens (13.5 QPS per card
planned, so 10 QPS a card runs it at 74 %), Poisson arrivals, least-outstanding routing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gateway import planfile
from gateway.planner.capacity import Workload
from gateway.planner.catalog import load_catalog
from gateway.planner.plan import make_plan, request_for
from gateway.planner.report import plan_dict
from gateway.whatif.run import WhatifOptions, run
from gateway.whatif.workload import Lengths
from gateway.whatif.workload import Workload as Arrivals

WORKLOAD = Workload(
    prompt_tokens=512, output_tokens=128, target_qps=1000, ttft_slo_s=2.0, tpot_slo_s=0.05
)
POLICY = "least_outstanding"
HOUR_GOAL_S = 600  # an hour of 1,000 cards at 10k QPS in under 10 minutes


def _plan() -> dict:
    catalog = load_catalog()
    req = request_for(
        catalog, model="llama-3.1-8b", quant="fp8", gpu="a100-80gb-sxm", workload=WORKLOAD
    )
    data = plan_dict(make_plan(req, catalog))
    return planfile.of(planfile.load(planfile.dump(data))).data  # as a plan file reads back


def _case(plan: dict, cards: int, qps: float, seconds: float, *, shards: int = 1,
          runs: bool = True) -> tuple[float, str]:  # fmt: skip
    arrivals = Arrivals(
        arrival="poisson", rate=qps, seed=1, prompt=Lengths(fixed=512), output=Lengths(fixed=128)
    )
    options = WhatifOptions(
        plan=plan, cards=cards, duration_s=seconds, workload=arrivals, policy=POLICY,
        shards=shards, runs=runs,
    )  # fmt: skip
    r = run(options)
    t = r.total
    line = (
        f"{cards:5d} cards {qps:6.0f} QPS {seconds:4.0f} s simulated, {shards:2d} shard(s)"
        f"{'' if runs else ', every step on its own'}: {r.wall_s:6.1f} s wall, "
        f"{r.sim_per_wall:6.2f} simulated s per wall s, "
        f"{r.cpu_s / max(1, t.arrived) * 1e6:5.0f} us CPU per request, "
        f"{r.steps / r.cpu_s / 1e3:5.0f}k engine steps per CPU s; "
        f"SLO met {t.met / max(1, t.ended):.1%}"
    )
    return r.sim_per_wall, line


def main() -> None:
    plan = _plan()
    print("whatif: virtual-time speed (this machine: "
          f"{os.cpu_count()} cores; CPU-bound, one core per shard)")  # fmt: skip
    speed_100, line = _case(plan, 100, 1000, 120)
    print("  " + line)
    steps_100, line = _case(plan, 100, 1000, 30, runs=False)
    print("  " + line)
    print(f"  event to event vs step by step at 100 cards: {speed_100 / steps_100:.2f}x")
    _, line = _case(plan, 1000, 10_000, 5)
    print("  " + line)
    speed_1000, line = _case(plan, 1000, 10_000, 30, shards=10)
    print("  " + line)
    hour = 3600 / speed_1000
    print(
        f"  an hour of 1,000 cards at 10k QPS in cells of 100: {hour / 60:.1f} min on "
        f"{min(10, os.cpu_count() or 1)} core(s) (goal: < {HOUR_GOAL_S / 60:.0f} min on one "
        f"core; {'met' if hour * min(10, os.cpu_count() or 1) < HOUR_GOAL_S else 'NOT met'})"
    )
    from tests.whatif_agreement import measure

    with tempfile.TemporaryDirectory() as d:
        a = measure(Path(d))
    print("whatif vs prove (tests/whatif_agreement.py, round robin):")
    for line in a.lines():
        print("  " + line)
    exact = a.completed_prove == a.completed_whatif == a.requests
    print(f"  worst p50/p95 TTFT/TPOT difference {a.worst:.1%} (target <= 5 %: "
          f"{'met' if a.worst <= 0.05 and exact else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
