"""A what-if's answer: a line per minute and the run's totals on the console, the same as JSON
(`--json`), and an HTML report with plots over time (`--report DIR`), as `cardinal prove` writes
one."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from gateway.whatif.run import Result
from loadtest.verdict import finite

SCHEMA = 1  # the --json layout, raised when a field changes meaning


def as_dict(r: Result) -> dict[str, Any]:
    o = r.options
    return {
        "schema": SCHEMA,
        "plan": {k: o.plan["inputs"][k] for k in ("model", "quant", "gpu", "engine")},
        "cards": o.cards,
        "cards_at_end": r.cards_at_end,
        "policy": r.policy,
        "duration_s": o.duration_s,
        "workload": {
            "arrival": o.workload.arrival,
            "mean_rate_qps": o.workload.mean_rate,
            "cv": o.workload.cv if o.workload.arrival == "gamma" else None,
            "seed": o.seed,
        },
        "events": [e.__dict__ for e in o.events],
        "autoscale": o.autoscale.__dict__ if o.autoscale else None,
        "shards": o.shards,
        "total": r.total.summary()
        | {
            "rejected_by_reason": dict(r.total.rejected),
            "failed_by_reason": dict(r.total.failed),
        },
        "minutes": [w.summary(m) for m, w in r.minutes.items()],
        "gpu_hours": r.gpu_hours,
        "cost_usd": r.cost_usd,
        "simulator": {
            "wall_s": r.wall_s,
            "cpu_s": r.cpu_s,
            "sim_s_per_wall_s": r.sim_per_wall,
            "engine_steps": r.steps,
        },
    }


def dumps(r: Result) -> str:
    return json.dumps(finite(as_dict(r)), indent=2)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


COLUMNS = (
    ("min", lambda s: str(s["minute"])),
    ("arrived", lambda s: str(s["arrived"])),
    ("done", lambda s: str(s["completed"])),
    ("429/503", lambda s: str(s["rejected"])),
    ("failed", lambda s: str(s["failed"])),
    ("SLO met", lambda s: _pct(s["slo_attainment"])),
    ("TTFT p50", lambda s: _ms(s["ttft_p50_s"])),
    ("p95", lambda s: _ms(s["ttft_p95_s"])),
    ("p99", lambda s: _ms(s["ttft_p99_s"])),
    ("TPOT p50", lambda s: _ms(s["tpot_p50_s"])),
    ("p95", lambda s: _ms(s["tpot_p95_s"])),
    ("cards up", lambda s: _n(s["cards_up_mean"])),
    ("queue", lambda s: _n(s["queued_mean"])),
    ("batch/card", lambda s: "-" if not s["cards_up_mean"] or s["running_mean"] is None
        else f"{s['running_mean'] / s['cards_up_mean']:.1f}"),
)  # fmt: skip


def render(r: Result, *, every: int = 1) -> str:
    """The minutes (every `every`-th, and any with a rejection or failure) and the totals."""
    rows = [w.summary(m) for m, w in r.minutes.items() if m % every == 0 or w.rejected or w.failed]
    table = [[name for name, _ in COLUMNS]] + [[f(s) for _, f in COLUMNS] for s in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    t = r.total.summary()
    o = r.options
    lines += [
        "",
        f"{o.cards} card(s) at start, {r.cards_at_end} at the end, {r.policy} routing, "
        f"{o.workload.arrival} arrivals at {o.workload.mean_rate:.4g} QPS mean, "
        f"{o.duration_s / 60:.4g} min",
        f"requests: {t['arrived']} arrived, {t['completed']} completed, {t['rejected']} rejected "
        f"({_reasons(r.total.rejected)}), {t['failed']} failed ({_reasons(r.total.failed)})",
        f"SLO attainment {_pct(t['slo_attainment'])}  "
        f"TTFT p50/p95/p99 {_ms(t['ttft_p50_s'])}/{_ms(t['ttft_p95_s'])}/{_ms(t['ttft_p99_s'])} ms"
        f"  TPOT p50/p95/p99 {_ms(t['tpot_p50_s'])}/{_ms(t['tpot_p95_s'])}/"
        f"{_ms(t['tpot_p99_s'])} ms  e2e p95 {_ms(t['e2e_p95_s'])} ms",
        f"GPU-hours {r.gpu_hours:.1f}"
        + (f", ${r.cost_usd:,.2f} at the plan's GPU price" if r.cost_usd is not None else ""),
        f"simulated {o.duration_s:.0f} s in {r.wall_s:.1f} s ({r.sim_per_wall:.0f}x real time, "
        f"{o.shards} shard(s), {r.steps:,} engine steps)",
    ]
    return "\n".join(lines)


def _reasons(c: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def write_report(r: Result, out: Path) -> Path:
    """index.html and its plots in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [w.summary(m) for m, w in r.minutes.items()]
    images = _plots(out, rows, r)
    (out / "whatif.json").write_text(dumps(r), encoding="utf-8")
    page = out / "index.html"
    page.write_text(_html(r, rows, images), encoding="utf-8")
    return page


def _plots(out: Path, rows: list[dict[str, Any]], r: Result) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["minute"] for s in rows]
    w = r.options.plan["inputs"]["workload"]
    images = []

    def series(key: str, scale: float = 1.0) -> list[float]:
        return [math.nan if s[key] is None else s[key] * scale for s in rows]

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(minutes, [s["arrived"] / 60 for s in rows], label="arrived")
    ax.plot(minutes, [s["completed"] / 60 for s in rows], label="completed")
    ax.plot(minutes, [(s["rejected"] + s["failed"]) / 60 for s in rows], color="red",
            label="rejected or failed")  # fmt: skip
    ax.set(xlabel="minute", ylabel="requests per second", title="traffic")
    ax.legend(fontsize=8)
    images.append(_save(fig, out / "traffic.png"))

    fig, ax = plt.subplots(figsize=(9, 3.2))
    for q in (50, 95, 99):
        ax.plot(minutes, series(f"ttft_p{q}_s", 1e3), label=f"TTFT p{q}")
    ax.axhline(w["ttft_slo_s"] * 1e3, ls="--", color="gray", label="TTFT SLO")
    ax.set(xlabel="minute", ylabel="ms", title="time to first token", yscale="log")
    ax.legend(fontsize=8)
    images.append(_save(fig, out / "ttft.png"))

    fig, ax = plt.subplots(figsize=(9, 3.2))
    for q in (50, 95):
        ax.plot(minutes, series(f"tpot_p{q}_s", 1e3), label=f"TPOT p{q}")
    ax.axhline(w["tpot_slo_s"] * 1e3, ls="--", color="gray", label="TPOT SLO")
    ax.set(xlabel="minute", ylabel="ms", title="time per output token")
    ax.legend(fontsize=8)
    images.append(_save(fig, out / "tpot.png"))

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(minutes, series("cards_up_mean"), label="cards up")
    ax.plot(minutes, series("queued_mean"), label="gateway queue")
    ax.plot(minutes, [100 * (s["slo_attainment"] or 0) for s in rows], label="SLO met, %")
    ax.set(xlabel="minute", title="cards, queue and SLO attainment")
    ax.legend(fontsize=8)
    images.append(_save(fig, out / "fleet.png"))
    return images


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _html(r: Result, rows: list[dict[str, Any]], images: list[Path]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(name)}</th>" for name, _ in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(f(s))}</td>" for _, f in COLUMNS) + "</tr>" for s in rows
    )
    summary = render(r, every=10**9).split("\n\n", 1)[-1]
    pictures = "".join(f'<p><img src="{e(p.name)}" alt="{e(p.stem)}"></p>' for p in images)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Cardinal what-if</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
        f"<h1>What-if: {e(r.options.plan['inputs']['model'])} on "
        f"{e(r.options.plan['inputs']['gpu'])}</h1><pre>{e(summary)}</pre>{pictures}"
        f"<h2>Per minute</h2><table><tr>{head}</tr>{body}</table>"
        "<p>Virtual time: the gateway's own admission and routing over simulated cards timed "
        "by the planner's speed model (docs/whatif.md).</p></body></html>"
    )
