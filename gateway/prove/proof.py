"""`cardinal prove fleet.yaml`: start the plan's cards and the gateway, drive them with the Locust
scenario at the target rate, and say whether the plan holds (exit 0), does not (1) or could not be
judged (2)."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from gateway import planfile
from gateway.planfile import PlanFile
from gateway.prove import ground
from gateway.prove.at_scale import prove_at_scale
from gateway.prove.binding import binding_constraint, failure_cause
from gateway.prove.fleet import gateway, plan_batch, sim_cards
from gateway.prove.report import write_report
from gateway.prove.trial import Trial, run_trial, slots, wait_idle

SWEEP_STEP = 1.25  # bracket the capacity in steps of 25 %
SWEEP_PRECISION = 0.05  # then bisect to 5 %
SWEEP_TRIALS = 8


@dataclass(frozen=True, kw_only=True)
class ProveOptions:
    plan_path: Path
    report: Path
    duration_s: float = 60.0
    target_qps: float | None = None
    cards: int | None = None
    backends: tuple[str, ...] = ()
    gateway: str | None = None
    sweep: bool = False
    check_minimal: bool = False
    tokens_per_event: int = 4
    at_scale: bool = False  # the plan's at-scale layout (prove/at_scale.py), not its replicas
    trace: Path | None = None  # replay this trace's arrivals and lengths (qps.py --trace)
    policy: str | None = None  # the gateway's routing, instead of the rendered config's


def prove(o: ProveOptions, *, say: Callable[[str], None] = print) -> int:
    if o.at_scale:
        return prove_at_scale(o, say=say, outcome=_outcome)
    plan = planfile.read(o.plan_path.read_text(encoding="utf-8"))
    if not plan.fits:
        raise planfile.PlanFileError("the plan does not fit; nothing to prove", field="fit.kind")
    target = o.target_qps or plan.workload.target_qps
    n = o.cards or len(o.backends) or plan.replicas
    o.report.mkdir(parents=True, exist_ok=True)
    seqs = plan.replica_concurrency
    with ExitStack() as stack:
        urls = _fleet(stack, o, n)
        own = engine_slots(urls, plan, say) if o.backends else []
        gw = o.gateway or stack.enter_context(
            gateway(
                o.plan_path,
                backends=urls,
                log=o.report / "gateway.log",
                slots=own,
                policy=o.policy,
            )
        )
        say(f"proving {target:g} QPS on {n} card(s) behind {gw} ({o.duration_s:.0f} s)")

        def run(name: str, qps: float, gw_url: str, cards: list[str]) -> Trial:
            if cards:
                wait_idle(gw_url, cards)
            trial = run_trial(
                name=name,
                plan_path=o.plan_path,
                gateway=gw_url,
                cards=cards,
                target_qps=qps,
                duration_s=o.duration_s,
                out_dir=o.report,
                progress=say,
                scenario=["--trace", str(o.trace)] if o.trace else [],
            )
            say(f"{name} at {qps:.2f} QPS on {len(cards) or n} card(s): {trial.verdict['label']}")
            return trial

        main = run("proof", target, gw, urls)
        binding = _explain(main, max_num_seqs=seqs, say=say)
        minimal = _minimal(stack, o, run, target, urls, own, say) if o.check_minimal else None
        minimal_binding = _explain(minimal, max_num_seqs=seqs, say=say) if minimal else None
        start = (plan.replica.capacity_qps or target / n) * n  # search around the plan
        sweep = _sweep(lambda q: run(f"sweep-{q:.2f}", q, gw, urls), start, say) if o.sweep else []
    code = _outcome(main, minimal, say)
    if sweep:
        _report_sweep(sweep, plan, n, say)
    page = write_report(
        o.report,
        plan=plan,
        main=main,
        binding=binding,
        sweep=sweep,
        minimal=minimal,
        minimal_binding=minimal_binding,
    )
    say(f"report: {page}")
    return code


def _explain(trial: Trial, *, max_num_seqs: int | None, say: Callable[[str], None]) -> str:
    """Print a trial's verdict table, its binding constraint and, unless it passed, the cause in
    one line (its records' errors or the checks it missed); return the binding constraint."""
    say(trial.table)
    if trial.ground:
        say(ground.render(trial.ground))
    binding = binding_constraint(trial, max_num_seqs=max_num_seqs)
    say(f"binding constraint: {binding}")
    if (cause := failure_cause(trial, binding=binding)) is not None:
        say(f"cause of {trial.verdict['label']}: {cause}")
    return binding


def engine_slots(urls: list[str], plan: PlanFile, say: Callable[[str], None]) -> list[int | None]:
    """Each given engine's own slot count where it publishes one (llama.cpp's /slots), so the
    gateway does not send it the plan's batch; None where it does not."""
    found = []
    for url in urls:
        listed = slots(url)
        found.append(len(listed) if listed else None)
        mine = f"{len(listed)} slots (its /slots)" if listed else "no slot count published"
        say(f"{url}: {mine}; the plan's batch is {plan_batch(plan)}")
    return found


def _fleet(stack: ExitStack, o: ProveOptions, n: int) -> list[str]:
    """The cards' URLs (started here unless given)."""
    if o.backends:
        return list(o.backends)
    if o.gateway:
        return []
    cards = stack.enter_context(
        sim_cards(o.plan_path, cards=n, tokens_per_event=o.tokens_per_event, logs=o.report)
    )
    return cards.urls


def _minimal(
    stack: ExitStack,
    o: ProveOptions,
    run: Callable[[str, float, str, list[str]], Trial],
    target: float,
    urls: list[str],
    own: list[int | None],
    say: Callable[[str], None],
) -> Trial | None:
    if len(urls) < 2:
        say("--check-minimal: needs at least two cards that this run started or was given")
        return None
    fewer = urls[:-1]
    log = o.report / "gateway-1.log"
    gw = stack.enter_context(
        gateway(o.plan_path, backends=fewer, log=log, slots=own[:-1], policy=o.policy)
    )
    return run("minus-one", target, gw, fewer)


def _outcome(main: Trial, minimal: Trial | None, say: Callable[[str], None]) -> int:
    if minimal is None or not main.passed:
        return main.code
    if minimal.passed:
        say(f"plan is padded: {minimal.cards} card(s) also meet the target")
        return 1
    if minimal.invalid:
        say(f"{minimal.cards} card(s): INVALID, so minimality is not shown")
        return 2
    say(
        f"minimal: {main.cards} cards pass and {minimal.cards} fail, so the plan is neither short "
        "nor padded"
    )
    return 0


class SweepVoid(Exception):
    """A rate judged INVALID twice: the sweep cannot say whether it passes, so it says nothing."""

    def __init__(self, q: float) -> None:
        super().__init__(
            f"sweep void: the trial at {q:.2f} QPS was INVALID twice (the load generator or a "
            "simulator could not keep real time), so no capacity is read from the sweep"
        )


def search_rate(
    run: Callable[[float], Trial], start: float, *, max_trials: int = SWEEP_TRIALS
) -> list[Trial]:
    """Highest passing rate: bracket in steps of SWEEP_STEP, then bisect geometrically. Used by
    `prove --sweep` and by `cardinal calibrate`. An INVALID trial is not a FAIL: it is run
    again once, and a second INVALID voids the sweep (SweepVoid)."""
    trials: list[Trial] = []

    def passes(q: float) -> bool:
        trials.append(run(q))
        if trials[-1].invalid:
            trials.append(run(q))
            if trials[-1].invalid:
                raise SweepVoid(q)
        return trials[-1].passed

    lo, hi = (start, math.inf) if passes(start) else (0.0, start)
    while len(trials) < max_trials and (math.isinf(hi) or lo == 0):
        q = lo * SWEEP_STEP if math.isinf(hi) else hi / SWEEP_STEP
        lo, hi = (q, hi) if passes(q) else (lo, q)
    while len(trials) < max_trials and lo and hi / lo > 1 + SWEEP_PRECISION:
        q = math.sqrt(lo * hi)
        lo, hi = (q, hi) if passes(q) else (lo, q)
    return trials


def _sweep(run: Callable[[float], Trial], start: float, say: Callable[[str], None]) -> list[Trial]:
    try:
        return search_rate(run, start)
    except SweepVoid as e:
        say(str(e))
        return []


def highest_passing(trials: list[Trial]) -> float:
    return max((t.target_qps for t in trials if t.passed), default=0.0)


def _report_sweep(trials: list[Trial], plan: PlanFile, n: int, say: Callable[[str], None]) -> None:
    best = highest_passing(trials)
    per_card = best / n
    planned = plan.replica.capacity_qps
    gap = f" ({per_card / planned - 1:+.0%})" if planned else ""
    say(
        f"sweep: highest passing rate {best:.2f} QPS on {n} card(s) = {per_card:.2f} QPS per card; "
        f"the plan says {planned} per replica{gap}"
    )
