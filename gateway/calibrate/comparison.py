"""Measured against modelled: the `calibration` section `cardinal plan --calibration` adds to the
plan, and its lines in the report."""

from __future__ import annotations

from typing import Any

from gateway.planfile import PlanFile

WORKLOAD_KEYS = ("prompt_tokens", "output_tokens", "ttft_slo_s", "tpot_slo_s")


def compare(
    cal: dict[str, Any], *, measured: dict[str, Any], modelled: dict[str, Any], source: str
) -> dict[str, Any]:
    """The section: where the measurement came from, and each figure measured beside modelled."""
    points = sorted(cal["decode"]["points"], key=lambda p: p["batch"])
    best = max(points, key=lambda p: p["tokens_per_s"])
    batch1 = next((p for p in points if p["batch"] == 1), None)
    sp, rep = modelled["speed"], modelled["replica"]
    figures = {
        "decode_tokens_per_s_batch1": (
            batch1 and batch1["tokens_per_s"], sp["decode_tokens_per_s_batch1"]
        ),
        "decode_tokens_per_s_best": (best["tokens_per_s"], None),
        "prefill_tokens_per_s": (cal["prefill"]["tokens_per_s"], sp["prefill_tokens_per_s"]),
        "per_card_qps": (cal["capacity"]["per_card_qps"], rep["per_card_qps"]),
        "replicas": (measured["fleet"]["replicas"], modelled["fleet"]["replicas"]),
        "gpus": (measured["fleet"]["gpus"], modelled["fleet"]["gpus"]),
    }  # fmt: skip
    return {
        "file": source,
        "measured_at": cal["measured_at"],
        "backend": cal["backend"],
        "workload": cal["workload"],
        "best_decode_batch": best["batch"],
        "figures": {k: {"measured": m, "modelled": p} for k, (m, p) in figures.items()},
    }


def workload_mismatch(cal: dict[str, Any], plan: PlanFile) -> str | None:
    """A warning when the card was measured on another workload than the plan's."""
    measured = cal["workload"]
    planned = {k: getattr(plan.workload, k) for k in WORKLOAD_KEYS}
    differ = [k for k in WORKLOAD_KEYS if measured[k] != planned[k]]
    if not differ:
        return None
    pairs = ", ".join(f"{k} {measured[k]:g} vs {planned[k]:g}" for k in differ)
    return (
        f"the calibration was measured on another workload ({pairs}, measured vs planned): "
        "its capacity holds for the workload it was measured on; calibrate with --plan"
    )


def render_comparison(section: dict[str, Any]) -> str:
    """The report's `Measured vs modelled` block."""
    f, b = section["figures"], section["backend"]
    rows = [
        ("decode, batch 1", f["decode_tokens_per_s_batch1"], "{:,.1f} tokens/s"),
        (
            f"decode, batch {section['best_decode_batch']} (best)",
            f["decode_tokens_per_s_best"],
            "{:,.1f} tokens/s",
        ),
        ("prefill", f["prefill_tokens_per_s"], "{:,.0f} tokens/s"),
        ("capacity per card", f["per_card_qps"], "{:.3f} QPS"),
        ("replicas", f["replicas"], "{}"),
        ("GPUs", f["gpus"], "{}"),
    ]
    lines = [
        "",
        f"Measured vs modelled ({section['file']}: {b['engine']} at {b['url']}, "
        f"{section['measured_at']})",
        f"  {'':26}{'measured':>18}  {'modelled':>18}",
    ]
    for name, pair, spec in rows:
        lines.append(
            f"  {name:26}{_fmt(pair['measured'], spec):>18}  {_fmt(pair['modelled'], spec):>18}"
        )
    lines.append("  (the fleet above is sized from the measured capacity)")
    return "\n".join(lines) + "\n"


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else spec.format(x)
