"""Was each simulated card's event loop on time while the run was judged?

A simulator that wakes late delivers tokens late, and a proof against it measures the simulator.
Only the judged window counts: a stall while the processes start, or in the warm-up, moves no
judged latency. Each card's `sim_event_loop_lag_seconds` histogram is read at every sample of
the run; the wake-ups between the samples around the window are judged (that is the window and
at most one sampling interval either side: the check errs toward INVALID).

A late loop only slows a card, so it voids a PASS it did not cause and a FAIL it may have
caused. A FAIL on throughput stands when the cards would still complete too little with the time
their loops lost given back (each card's summed lateness in the window: an over-estimate, since
the engine's absolute timeline catches up after a late wake-up)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.sim.lag import LATE_S
from loadtest.verdict import COMPLETED_SHARE_LIMIT, check_row

LAG = "sim_event_loop_lag_seconds"
LATE_SHARE = 0.01  # of a card's wake-ups in the window (the p99 the simulator promises to keep)

Metrics = dict[str, list[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class LagCount:
    """A card's wake-ups so far, how many of them were more than LATE_S late, and their summed
    lateness (inf where the card does not report it)."""

    wakeups: float
    late: float
    lag_s: float = math.inf


def lag_count(m: Metrics) -> LagCount | None:
    """From a card's /metrics (None: not a simulated card)."""
    counts = m.get(LAG + "_count")
    on_time = [v for labels, v in m.get(LAG + "_bucket", []) if _le(labels) == LATE_S]
    if not counts or not on_time:
        return None
    total = m.get(LAG + "_sum")
    return LagCount(
        wakeups=counts[0][1],
        late=counts[0][1] - on_time[0],
        lag_s=total[0][1] if total else math.inf,
    )


def judge_lag(
    check: dict[str, Any], *, code: int, verdict: dict[str, Any], table: str, lost_s: float
) -> tuple[int, str]:
    """The trial's exit code and verdict table with the check in: a row after qps.py's own
    validity rows, and INVALID (2) where the check failed on a verdict of PASS, or of FAIL that
    the `lost_s` seconds the worst card's loop lost could explain. The verdict (qps.py's
    summary) is updated in place."""
    verdict["validity"].append(check)
    ok = "ok" if check["ok"] else "MISSED"
    row = check_row(check["name"], check["value"], check["limit"], ok)
    lines = table.split("\n")
    last = max((i for i, x in enumerate(lines) if x.startswith("  generator ")), default=-1)
    table = "\n".join([*lines[: last + 1], row, *lines[last + 1 :]])
    if check["ok"] or code not in (0, 1):
        return code, table
    if code == 1 and (short := _short_anyway(verdict, lost_s)):
        return code, f"{table}\n{short}"
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


def _short_anyway(verdict: dict[str, Any], lost_s: float) -> str | None:
    """Why the FAIL stands despite the late loop, if it does: the cards' completed rate scaled
    up to the window without the lost time is still under the completed-rate limit."""
    lo, hi = verdict["window"]
    span = hi - lo
    if not lost_s < span:
        return None
    best = verdict["completed_qps"] * span / (span - lost_s)
    need = COMPLETED_SHARE_LIMIT * verdict["offered_qps"]
    if best >= need:
        return None
    return (
        f"FAIL stands: a simulated card's event loop ran late, but given back the {lost_s:.2f} s "
        f"its lateness cost in the {span:.1f} s window, the cards complete at most {best:.2f} "
        f"QPS, under the {need:.2f} needed"
    )


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
    shares = []
    for a, b in _around(at, lo, hi):
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


def lost_s(at: Sequence[tuple[float, Sequence[LagCount | None]]], lo: float, hi: float) -> float:
    """The most time any simulated card's loop lost to lateness over [lo, hi] (as lag_check)."""
    return max((b.lag_s - a.lag_s for a, b in _around(at, lo, hi)), default=0.0)


def _around(
    at: Sequence[tuple[float, Sequence[LagCount | None]]], lo: float, hi: float
) -> list[tuple[LagCount, LagCount]]:
    """Each simulated card's counts at the last sample before lo and the first after hi."""
    before = [s for s in at if s[0] <= lo] or at[:1]
    after = [s for s in at if s[0] >= hi] or at[-1:]
    if not before or not after:
        return []
    pairs = zip(before[-1][1], after[0][1], strict=True)
    return [(a, b) for a, b in pairs if a is not None and b is not None]
