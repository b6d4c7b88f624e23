"""`cardinal whatif`: the fleet in virtual time. Runs of decode steps taken at once equal the
steps taken one by one; the gateway's own admission and routing decide; lost cards, slowed cards
and the autoscaler act when told; bad flags are one line naming the flag. (Agreement with
`cardinal prove` on real-time simulated cards: tests/test_whatif_prove.py.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import planfile
from gateway.cli.main import main
from gateway.planner.catalog import load_catalog
from gateway.sim.card import card_from_plan
from gateway.sim.engine import EngineConfig
from gateway.whatif.engine import VirtualClock, VirtualEngine
from gateway.whatif.events import parse_autoscale, parse_event
from gateway.whatif.fleet import Fleet, gateway_config
from gateway.whatif.workload import Workload, parse_lengths
from tests.whatif_agreement import PLAN

CARDINAL = Path(sys.executable).with_name("cardinal")
DEMO = PLAN  # the demo plan: 4 L4 cards for 15 QPS of 512/128 tokens


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whatif") / "fleet.yaml"
    assert main(["plan", *DEMO, "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def plan(plan_path: Path) -> planfile.PlanFile:
    return planfile.read(plan_path.read_text())


def _fleet(plan: planfile.PlanFile, cards: int, workload: Workload, **kw: Any) -> Fleet:
    duration = kw.pop("duration_s", 120.0)
    return Fleet(
        card=card_from_plan(load_catalog(), plan),
        config=gateway_config(plan, cards, policy=kw.pop("policy", None)),
        arrivals=iter(workload),
        duration_s=duration,
        ttft_slo_s=plan.workload.ttft_slo_s,
        tpot_slo_s=plan.workload.tpot_slo_s,
        records=True,
        **kw,
    )


def _mixed(rate: float, *, cv: float = 1.0, seed: int = 1) -> Workload:
    return Workload(
        arrival="gamma" if cv != 1.0 else "poisson",
        rate=rate,
        cv=cv,
        seed=seed,
        prompt=parse_lengths("p0=20,p50=500,p99=4000", field="prompt_tokens", trace=None),
        output=parse_lengths("p0=2,p50=128,p99=600", field="output_tokens", trace=None),
    )


def _by_id(fleet: Fleet) -> dict[int, dict[str, Any]]:
    assert fleet.stats.records is not None
    return {r["id"]: r for r in fleet.stats.records}


@pytest.mark.parametrize("policy", ["engine_aware", "least_outstanding", "round_robin"])
def test_runs_of_decode_steps_equal_the_steps_one_by_one(
    plan: planfile.PlanFile, policy: str
) -> None:
    """Bursty arrivals that overload the fleet (queue timeouts), a slowed card and a lost one:
    every request ends the same way at the same times, with fewer wake-ups."""
    events = [
        parse_event("40s:slow=3,cards=1", cold_start_s=0),
        parse_event("70s:lose=1", cold_start_s=0),
    ]
    runs, steps = (
        _fleet(plan, 4, _mixed(18, cv=3), policy=policy, events=events, runs=r)
        for r in (True, False)
    )
    runs.run()
    steps.run()
    a, b = _by_id(runs), _by_id(steps)
    assert a.keys() == b.keys() and len(a) > 1500
    assert [a[k]["error"] for k in a] == [b[k]["error"] for k in a]
    errors = {a[k]["error"] for k in a}
    assert {"", "queue_timeout", "stream_cut"} <= errors, errors  # each path was taken
    for k in a:
        for f in ("ttft_s", "tpot_s", "e2e_s"):
            x, y = a[k][f], b[k][f]
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) < 1e-9, (k, f, x, y)
    assert runs.steps() == steps.steps()  # the same steps, only taken together
    wakeups = sum(c.engine.starts for c in runs.cards)
    assert wakeups < 0.7 * sum(c.engine.starts for c in steps.cards)


class _Bent:
    """A step time that is not affine in the context: each step of a run is then timed alone."""

    def decode_step_s(self, *, batch: float, ctx: float) -> float:
        return 0.01 + 1e-4 * batch + 1e-9 * ctx**2

    def prefill_s(self, tokens: int) -> float:
        return 0.005 + 1e-5 * tokens


@pytest.mark.parametrize("speed", [_Bent()], ids=["quadratic-in-context"])
def test_a_run_cut_by_an_arrival_ends_at_the_step_the_arrival_joins(speed: Any) -> None:
    config = EngineConfig(kv_tokens=100_000, max_num_seqs=8, max_num_batched_tokens=512)
    clock = VirtualClock()
    run_engine, step_engine = (
        VirtualEngine(config=config, speed=speed, clock=clock, runs=r) for r in (True, False)
    )
    for e in (run_engine, step_engine):
        e.submit(prompt_tokens=100, max_tokens=50)
    end = run_engine.start(0.0)  # the prefill
    assert end is not None
    run_engine.finish()
    t = end
    end = run_engine.start(t)  # 49 decode steps at once
    assert run_engine.plan is not None and run_engine.plan.k == 49
    arrival = t + 0.3
    clock.t = arrival
    run_engine.submit(prompt_tokens=10, max_tokens=5)
    assert run_engine.joins()
    cut = run_engine.cut(arrival)
    assert cut is not None and cut >= arrival
    run_engine.finish()
    # the same by single steps: the arrival joins the first step that starts at or after it
    t = 0.0
    while t < arrival:
        step_end = step_engine.start(t)
        assert step_end is not None
        step_engine.finish()
        t = step_end
    assert cut == pytest.approx(t, abs=1e-12)
    (seq_run,) = [s for s in run_engine._running if s.prompt_tokens == 100]
    (seq_step,) = [s for s in step_engine._running if s.prompt_tokens == 100]
    assert seq_run.generated == seq_step.generated
    assert seq_run.last_s == pytest.approx(seq_step.last_s)


def test_the_gateways_admission_refuses_what_its_queue_cannot_hold(plan: planfile.PlanFile) -> None:
    """One card, the rendered gateway's slots (the plan's batch), queue (one batch) and timeout
    (the TTFT SLO): three times its capacity gets queue_full and queue_timeout 429s, and neither
    the card nor the queue ever holds more than the gateway lets through."""
    capacity = plan.replica.capacity_qps
    fleet = _fleet(plan, 1, _mixed(3 * capacity))
    fleet.run()
    total = fleet.stats.total()
    assert total.rejected["queue_timeout"] > 0 and total.rejected["queue_full"] > 0
    config, batch = fleet.config.admission, plan.replica_concurrency
    assert config.queue_size == batch and config.queue_timeout_s == plan.workload.ttft_slo_s
    samples = [s for w in fleet.stats.minutes.values() for s in w.samples]
    assert 0 < max(s["queued"] for s in samples) <= config.queue_size
    assert max(s["running"] + s["waiting"] for s in samples) <= batch
    assert total.arrived == total.ended


def test_losing_cards_retries_what_had_no_first_token_and_keeps_them_out(
    plan: planfile.PlanFile,
) -> None:
    fleet = _fleet(
        plan,
        8,
        _mixed(plan.replica.capacity_qps * 4),
        events=[parse_event("30s:lose=3", cold_start_s=0)],
    )
    fleet.run()
    total = fleet.stats.total()
    cut = total.failed["stream_cut"]
    assert cut > 0 and set(total.failed) == {"stream_cut"}  # waiting ones went elsewhere
    assert total.arrived == total.ended
    lost = [c for c in fleet.cards if not c.alive]
    assert [c.index for c in lost] == [5, 6, 7]  # the last three in service: a node
    assert all(not c.backend.up and c.backend.failures >= 2 for c in lost)  # probed, still out
    minutes = fleet.stats.minutes
    assert minutes[0].samples[-1]["cards_up"] == 5 and minutes[1].samples[-1]["cards_up"] == 5


def test_the_autoscaler_adds_cards_that_serve_only_after_their_cold_start(
    plan: planfile.PlanFile,
) -> None:
    per_card = plan.replica.capacity_qps
    rule = parse_autoscale("on", target=per_card, cold_start_s=120)
    fleet = _fleet(plan, 2, _mixed(per_card * 6), autoscale=rule, duration_s=300)
    fleet.run()
    added = fleet.cards[2:]
    assert len(fleet.cards) >= 6 and all(c.added_s > 0 for c in added)
    for c in added:  # admitted at the first probe after warming, not before
        assert c.backend.up and c.ready_s == c.added_s + 120
    first = min(c.added_s for c in added)
    before = [s for m, w in fleet.stats.minutes.items() for s in w.samples]
    up_early = [s["cards_up"] for s in before if s["t"] < first + 120]
    assert max(up_early, default=2) == 2
    assert fleet.gpu_hours() > 2 * 300 / 3600


def test_cli_prints_minutes_and_json_and_writes_a_report(plan_path: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [str(CARDINAL), "whatif", str(plan_path), "--duration", "3m", "--json", "--report",
         str(tmp_path / "r"), "--event", "1m:lose=1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["schema"] == 1 and data["cards"] == planfile.read(plan_path.read_text()).replicas
    assert [m["minute"] for m in data["minutes"]][:3] == [0, 1, 2]
    assert data["total"]["arrived"] == sum(m["arrived"] for m in data["minutes"])
    assert data["gpu_hours"] > 0 and data["cost_usd"] > 0
    assert (tmp_path / "r" / "index.html").exists() and (tmp_path / "r" / "ttft.png").exists()
    text = subprocess.run(
        [str(CARDINAL), "whatif", str(plan_path), "--duration", "2m", "--arrival", "gamma:cv=3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert "TTFT p50" in text.stdout and "SLO attainment" in text.stdout


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--event", "30m:explode=8"], "--event"),
        (["--event", "lose=8"], "--event"),
        (["--event", "1m:slow=0"], "--event"),
        (["--arrival", "gamma:cv=x"], "--arrival"),
        (["--arrival", "trace"], "--arrival"),
        (["--prompt-tokens", "p50=500,p90=100"], "--prompt-tokens"),
        (["--output-tokens", "trace"], "--output-tokens"),
        (["--autoscale", "target=0"], "--autoscale"),
        (["--autoscale", "speed=2"], "--autoscale"),
        (["--trace", "/nonexistent/trace.csv"], "--trace"),
        (["--cards", "2", "--shards", "3"], "--shards"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(
    plan_path: Path, args: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["whatif", str(plan_path), "--duration", "1m", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cardinal whatif: error: {field}:") and "\n" not in err, err


def test_shards_split_the_fleet_and_the_traffic(plan: planfile.PlanFile) -> None:
    from gateway.whatif.run import WhatifOptions, run

    options = WhatifOptions(plan=plan.data, cards=4, duration_s=120, workload=_mixed(5), shards=2)
    sharded = run(options)
    one = run(WhatifOptions(plan=plan.data, cards=4, duration_s=120, workload=_mixed(5)))
    for r in (sharded, one):
        assert r.total.arrived == r.total.ended and r.total.completed == r.total.arrived
    assert abs(sharded.total.arrived / one.total.arrived - 1) < 0.05
    p95 = sharded.total.ttft.quantile(0.95), one.total.ttft.quantile(0.95)
    assert 0.5 < p95[0] / p95[1] < 2  # two cells of two: the same fleet, less pooled
