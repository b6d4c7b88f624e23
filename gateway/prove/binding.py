"""Which constraint binds a fleet (the one with the least slack, from the verdict and the cards),
and why a trial that did not pass failed (its errors by cause, from its records)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gateway.prove.ground import read_records
from gateway.prove.trial import Trial, known_mean


def binding_constraint(trial: Trial, *, max_num_seqs: int | None) -> str:
    """`queue-bound`, `TTFT/prefill-bound` or `TPOT/decode-bound`, with the figures behind it."""
    v, s = trial.verdict, trial.settings
    stats = v.get("stats", {})
    pct = f"{s['percentile']:g}"
    ttft, tpot = stats.get(f"ttft_p{pct}_s", math.nan), stats.get(f"tpot_p{pct}_s", math.nan)
    busy = [x for x in trial.samples if x.t > s["warmup_s"]] or trial.samples
    waiting = known_mean([known_mean(x.waiting) for x in busy])
    queued = _mean([x.queued for x in busy])
    batch = known_mean([known_mean(x.running) for x in busy])
    growing = any(c["name"] == "queue not growing" and not c["ok"] for c in v.get("checks", []))
    cap = f" of max_num_seqs {max_num_seqs}" if max_num_seqs else ""
    if growing or (waiting or 0) > 1 or queued > 1:
        return (
            f"queue-bound: requests wait for a slot (mean {_show(waiting)} waiting per card, "
            f"{queued:.1f} in the gateway queue; mean batch {_show(batch)}{cap})"
        )
    slack = {
        "TTFT/prefill-bound": _slack(ttft, s.get("ttft_slo_s")),
        "TPOT/decode-bound": _slack(tpot, s.get("tpot_slo_s")),
    }
    name = min(slack, key=lambda k: slack[k])
    value, slo = (
        (ttft, s.get("ttft_slo_s")) if name.startswith("TTFT") else (tpot, s.get("tpot_slo_s"))
    )
    if slo is None or math.isnan(value):
        return f"not determined (no {name[:4]} SLO or no completed requests)"
    return (
        f"{name}: p{pct} {name[:4]} {value * 1e3:.0f} ms of {slo * 1e3:.0f} ms "
        f"({slack[name]:.0%} slack; mean batch {_show(batch)}{cap}, {_show(waiting)} waiting "
        "per card)"
    )


def _slack(value: float, slo: Any) -> float:
    if slo is None or math.isnan(value):
        return math.inf
    return 1 - value / slo


def _show(figure: float | None) -> str:
    return "unknown" if figure is None else f"{figure:.1f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# -- why a trial failed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCause:
    """Requests in the judged window that ended the same way, and how many did."""

    verb: str  # refused, failed, unanswered
    what: str  # 'got 429 "no slot for `m` within 5 s"', from the records' own text
    count: int


def judged(trial: Trial, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the verdict judged: scheduled inside its window (warm-up and cool-down out)."""
    lo, hi = trial.verdict["window"]
    return [r for r in rows if lo <= r["scheduled_s"] < hi]


def errors_by_cause(rows: list[dict[str, Any]]) -> list[ErrorCause]:
    """The failed requests among `rows`, grouped by what they got back, most common first."""
    counts = Counter(_cause(r["error"]) for r in rows if r["error"])
    return [ErrorCause(verb, what, n) for (verb, what), n in counts.most_common()]


def failure_cause(trial: Trial, *, binding: str) -> str | None:
    """One line on why a trial did not pass (None when it did): its errors by cause with their
    measured shares where too many failed, else the checks it missed and the `binding`
    constraint behind them."""
    if trial.passed:
        return None
    if trial.invalid:
        return f"not judged: {_missed(trial.verdict.get('validity', []))}"
    checks = trial.verdict.get("checks", [])
    window = judged(trial, read_records(trial.records_csv))
    causes = errors_by_cause(window)
    if causes and any(c["name"] == "error rate" and not c["ok"] for c in checks):
        return _errors_line(causes, len(window))
    return f"missed {_missed(checks)}; {binding}"


def _errors_line(causes: list[ErrorCause], of: int) -> str:
    """`refused: 7.4 % got 429 "...", 2.0 % got 429 "..."; failed: ...`, most common first."""
    verbs: dict[str, list[str]] = {}
    for c in causes:
        verbs.setdefault(c.verb, []).append(f"{_share(c.count, of)} {c.what}")
    return "; ".join(f"{verb}: {', '.join(parts)}" for verb, parts in verbs.items())


def _cause(error: str) -> tuple[str, str]:
    """(verb, what) for one record's error text: qps.py writes `HTTP <status>: <body>`, the
    exception it caught, or `unfinished`."""
    if m := re.match(r"HTTP (\d{3}): (.*)", error, re.DOTALL):
        status, body = m.groups()
        return ("refused" if status == "429" else "failed"), f'got {status} "{_message(body)}"'
    if error == "unfinished":
        return "unanswered", "were still waiting for their answer when the run ended"
    return "failed", f"ended in {error}"


def _message(body: str) -> str:
    """The `error.message` of an OpenAI-shaped error body (qps.py keeps its first 300 bytes, so
    it may be cut short), else the body itself."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        m = re.search(r'"message":\s*"((?:[^"\\]|\\.)*)', body)
        message = m.group(1) if m else body
    return " ".join(str(message).split())


def _missed(checks: list[dict[str, Any]]) -> str:
    missed = [f"{c['name']} {c['value']} ({c['limit']})" for c in checks if not c["ok"]]
    return ", ".join(missed) or "no check (see the verdict table)"


def _share(count: int, of: int) -> str:
    return f"{100 * count / max(of, 1):.1f} %"
