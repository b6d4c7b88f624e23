"""Which constraint binds a fleet: the one with the least slack, from the verdict and the cards."""

from __future__ import annotations

import math
from typing import Any

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
