"""Was each simulated card's event loop on time while the run was judged?

A simulator that wakes late delivers tokens late, and a proof against it measures the simulator.
Only the judged window counts: a stall while the processes start, or in the warm-up, moves no
judged latency. Each card's `sim_event_loop_lag_seconds` histogram is read at every sample of
the run; the wake-ups between the samples around the window are judged (that is the window and
at most one sampling interval either side: the check errs toward INVALID)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.sim.lag import LATE_S

LAG = "sim_event_loop_lag_seconds"
LATE_SHARE = 0.01  # of a card's wake-ups in the window (the p99 the simulator promises to keep)

Metrics = dict[str, list[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class LagCount:
    """A card's wake-ups so far, and how many of them were more than LATE_S late."""

    wakeups: float
    late: float


def lag_count(m: Metrics) -> LagCount | None:
    """From a card's /metrics (None: not a simulated card)."""
    counts = m.get(LAG + "_count")
    on_time = [v for labels, v in m.get(LAG + "_bucket", []) if _le(labels) == LATE_S]
    if not counts or not on_time:
        return None
    return LagCount(wakeups=counts[0][1], late=counts[0][1] - on_time[0])


def judge_lag(
    check: dict[str, Any], *, code: int, verdict: dict[str, Any], table: str
) -> tuple[int, str]:
    """The trial's exit code and verdict table with the check in: a row after qps.py's own
    validity rows, and INVALID (2) where the check failed on a verdict of PASS or FAIL. The
    verdict (qps.py's summary) is updated in place."""
    verdict["validity"].append(check)
    ok = "ok" if check["ok"] else "MISSED"
    row = f"  {check['name']:<24}{check['value']:>12}   {check['limit']:<24}{ok}"
    lines = table.split("\n")
    last = max((i for i, x in enumerate(lines) if x.startswith("  generator ")), default=-1)
    table = "\n".join([*lines[: last + 1], row, *lines[last + 1 :]])
    if check["ok"] or code not in (0, 1):
        return code, table
    table = table.replace(
        f"Cardinal verdict: {verdict['label']} (exit {code})", "Cardinal verdict: INVALID (exit 2)"
    )
    verdict["code"], verdict["label"] = 2, "INVALID"
    table += (
        f"\nINVALID: a simulated card's event loop ran late in the judged window ({check['value']} "
        f"of wake-ups late, limit {check['limit']}): the latencies measure the simulator, not "
        "the plan"
    )
    return 2, table


def _le(labels: dict[str, str]) -> float | None:
    try:
        return float(labels.get("le", ""))
    except ValueError:
        return None


def lag_check(
    at: Sequence[tuple[float, Sequence[LagCount | None]]], lo: float, hi: float
) -> dict[str, Any] | None:
    """The verdict's validity row for the simulators' lag over [lo, hi] (wall-clock seconds),
    from (time, each card's LagCount) samples in time order; None when no card is simulated."""
    before = [s for s in at if s[0] <= lo] or at[:1]
    after = [s for s in at if s[0] >= hi] or at[-1:]
    if not before or not after:
        return None
    shares = []
    for a, b in zip(before[-1][1], after[0][1], strict=True):
        if a is None or b is None:
            continue
        wakeups = b.wakeups - a.wakeups
        shares.append((b.late - a.late) / wakeups if wakeups > 0 else 1.0)
    if not shares:
        return None
    worst = max(shares)
    return {
        "name": "simulator loop lag",
        "value": f"{worst:.1%}",
        "limit": f"<= {LATE_SHARE:.0%} wake-ups > {LATE_S * 1e3:g} ms",
        "ok": worst <= LATE_SHARE,
    }
