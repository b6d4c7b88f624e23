"""The report directory of a proof run: index.html with each run's verdict, cause and PNG plots,
the runs side by side, and the raw records as CSV."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.planfile import PlanFile
from gateway.prove import ground
from gateway.prove.binding import (
    ErrorCause,
    binding_constraint,
    errors_by_cause,
    failure_cause,
    judged,
)
from gateway.prove.ground import read_records
from gateway.prove.trial import Trial

STYLE = (
    "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
    "pre{background:#f4f4f4;padding:1em;overflow-x:auto}"
    "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.2em .6em}"
    "td{text-align:right}th{text-align:left}</style>"
)
LEGEND_CARDS = 8  # more cards than this: one line each still, but no legend to crowd the plot


@dataclass(frozen=True)
class Run:
    """One trial as the report shows it: its own binding constraint, cause and plots."""

    title: str
    trial: Trial
    binding: str
    cause: str | None  # None: it passed
    rows: list[dict[str, Any]]  # every record of the trial, warm-up and cool-down included
    images: list[Path]


def write_report(
    out: Path,
    *,
    plan: PlanFile,
    main: Trial,
    binding: str,
    sweep: list[Trial],
    minimal: Trial | None,
    minimal_binding: str | None = None,
) -> Path:
    """Write out/index.html and its plots; `minimal_binding` defaults to the minus-one trial's
    binding constraint without the plan's batch limit beside it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, and none needed
    runs = [_run(out, f"Proof on {main.cards} card(s)", main, binding)]
    if minimal is not None:
        other = minimal_binding or binding_constraint(minimal, max_num_seqs=None)
        runs.append(_run(out, f"One card fewer ({minimal.cards})", minimal, other))
    images = [_sweep_plot(out / "sweep.png", sweep, plan)] if sweep else []
    page = out / "index.html"
    page.write_text(_html(plan, runs, sweep, images), encoding="utf-8")
    return page


def _run(out: Path, title: str, trial: Trial, binding: str) -> Run:
    """The trial's records read once and its plots drawn, under file names of its own."""
    rows = read_records(trial.records_csv)
    images = [
        _qps_plot(out / f"{trial.name}.qps.png", rows, trial),
        _latency_plot(out / f"{trial.name}.latency.png", rows, trial),
        _cards_plot(out / f"{trial.name}.cards.png", trial),
    ]
    cause = failure_cause(trial, binding=binding)
    return Run(title=title, trial=trial, binding=binding, cause=cause, rows=rows, images=images)


# -- plots ----------------------------------------------------------------------------------------


def _qps_plot(path: Path, rows: list[dict[str, Any]], trial: Trial) -> Path:
    import matplotlib.pyplot as plt

    end = max((r["scheduled_s"] for r in rows), default=0.0)
    bins = list(range(int(end) + 2))
    offered = [r["scheduled_s"] for r in rows]
    done = [r["end_s"] for r in rows if not r["error"] and not math.isnan(r["end_s"])]
    failed = [r["scheduled_s"] for r in rows if r["error"]]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.hist(offered, bins=bins, histtype="step", label="offered (scheduled)")
    ax.hist(done, bins=bins, histtype="step", label="completed")
    if failed:
        ax.hist(failed, bins=bins, histtype="step", color="red", label="failed (when scheduled)")
    lo, hi = trial.verdict["window"]
    ax.axvspan(lo, hi, alpha=0.1, color="green", label="judged window")
    ax.axhline(trial.target_qps, ls="--", color="gray", label=f"target {trial.target_qps:g} QPS")
    ax.set(
        xlabel="seconds", ylabel="requests per second", title=f"{trial.name}: offered vs completed"
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize=8)  # beside: the lines fill it
    return _save(fig, path)


def _latency_plot(path: Path, rows: list[dict[str, Any]], trial: Trial) -> Path:
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r["error"] and not math.isnan(r["end_s"])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    s = trial.settings
    for ax, key, slo, title in (
        (axes[0], "ttft_s", s.get("ttft_slo_s"), "TTFT"),
        (axes[1], "tpot_s", s.get("tpot_slo_s"), "TPOT"),
    ):
        values = [r[key] * 1e3 for r in ok if not math.isnan(r[key])]
        ax.hist(values, bins=40)
        if slo:
            ax.axvline(slo * 1e3, color="red", ls="--", label=f"SLO {slo * 1e3:g} ms")
            ax.legend(fontsize=8)
        ax.set(xlabel="ms", ylabel="requests", title=f"{trial.name}: {title} of completed")
    return _save(fig, path)


def _cards_plot(path: Path, trial: Trial) -> Path:
    """Each card's batch and queue over the run (the 2 s samples), the gateway's queue beside."""
    import matplotlib.pyplot as plt

    t = [s.t for s in trial.samples]
    cards = max((len(s.running) for s in trial.samples), default=0)
    fig, (batch, queue) = plt.subplots(1, 2, figsize=(10, 3.5), sharex=True)
    for card in range(cards):
        batch.plot(t, [_figure(s.running, card) for s in trial.samples], label=f"card {card}")
        queue.plot(t, [_figure(s.waiting, card) for s in trial.samples], label=f"card {card}")
    for ax, what in ((batch, "batch (requests running)"), (queue, "queue (requests waiting)")):
        ax.set(xlabel="seconds", ylabel="requests", title=f"{trial.name}: {what} per card")
        if not _published(ax):
            ax.text(0.5, 0.5, "not published by the cards", ha="center", transform=ax.transAxes)
    queue.plot(t, [s.queued for s in trial.samples], "k--", label="gateway queue")
    if cards <= LEGEND_CARDS:
        queue.legend(fontsize=7)
    return _save(fig, path)


def _figure(values: list[float | None], card: int) -> float:
    """A card's figure in one sample; NaN (a gap in its line) where it gave none."""
    value = values[card] if card < len(values) else None
    return math.nan if value is None else value


def _published(ax: Any) -> bool:
    return any(not math.isnan(y) for line in ax.get_lines() for y in line.get_ydata())


def _sweep_plot(path: Path, sweep: list[Trial], plan: PlanFile) -> Path:
    import matplotlib.pyplot as plt

    trials = sorted(sweep, key=lambda t: t.target_qps)
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [t.target_qps for t in trials]
    ax.plot(x, [t.verdict["completed_qps"] for t in trials], marker="o", label="completed QPS")
    ax.plot(x, x, ls=":", color="gray", label="offered = completed")
    for t in trials:
        ax.annotate("pass" if t.passed else "fail", (t.target_qps, t.verdict["completed_qps"]))
    cap = plan.replica.capacity_qps
    if cap:
        ax.axvline(cap * trials[0].cards, color="green", ls="--", label="plan capacity")
    ax.set(xlabel="offered QPS", ylabel="completed QPS", title="Rate sweep")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -- the page -------------------------------------------------------------------------------------


def _html(plan: PlanFile, runs: list[Run], sweep: list[Trial], images: list[Path]) -> str:
    w = plan.workload
    parts = [
        f"<!doctype html><meta charset=utf-8><title>Cardinal proof</title>{STYLE}",
        f"<h1>Cardinal proof: {_e(plan.model)} {_e(plan.quant)} on {runs[0].trial.cards} x "
        f"{_e(plan.gpu)}</h1>",
        f"<p>{w.target_qps:g} QPS target, {w.prompt_tokens} prompt / {w.output_tokens} "
        f"output tokens, TTFT &le; {w.ttft_slo_s:g} s, TPOT &le; {w.tpot_slo_s * 1e3:g} ms. "
        f"Plan: {plan.replicas} replicas at {plan.replica.capacity_qps} QPS each."
        "</p>",
    ]
    if len(runs) > 1:
        parts.append(_side_by_side(runs))
    parts += [_section(run) for run in runs]
    if sweep:
        parts.append(_sweep_table(sweep))
    parts += [f'<p><img src="{p.name}" alt="{p.stem}"></p>' for p in images]
    return "\n".join(parts)


def _section(run: Run) -> str:
    """A run's verdict table, binding constraint, cause (unless it passed), plots and files."""
    t = run.trial
    cause = (
        "" if run.cause is None else f"<p><b>Cause of {t.verdict['label']}:</b> {_e(run.cause)}</p>"
    )
    images = "".join(f'<p><img src="{p.name}" alt="{p.stem}"></p>' for p in run.images)
    log = t.records_csv.with_name(f"{t.name}.locust.log").name
    return (
        f'<h2 id="{_e(t.name)}">{_e(run.title)}: {t.verdict["label"]}</h2>'
        f"{cause}<pre>{_e(t.table)}</pre>"
        f"<p>Binding constraint: {_e(run.binding)}</p>{_ground(t)}{images}"
        f'<p>Raw records: <a href="{t.records_csv.name}">{t.records_csv.name}</a>; '
        f'Locust log: <a href="{log}">{log}</a></p>'
    )


def _ground(t: Trial) -> str:
    """The whole run as the client, the gateway and the cards measured it: the servers' own
    histograms beside the client's records ("-": that one does not publish it)."""
    if not t.ground:
        return ""
    head = "".join(f"<th>{src}</th>" for src in ground.SOURCES)
    body = "".join(
        f"<tr><th>{_e(label)}</th>{''.join(f'<td>{_e(c)}</td>' for c in cells)}</tr>"
        for label, cells in ground.table(t.ground)
    )
    return (
        "<p>Measured over the whole run (warm-up and cool-down in), by each side; the servers' "
        "percentiles are read from their histogram buckets, as Prometheus's histogram_quantile "
        f"reads them:</p><table><tr><th></th>{head}</tr>{body}</table>"
    )


def _side_by_side(runs: list[Run]) -> str:
    """The runs as columns: rate, latency and the errors in each judged window, by cause."""
    pct = f"{runs[0].trial.settings.get('percentile', 95):g}"
    windows = [judged(r.trial, r.rows) for r in runs]
    errors = [(len(w), errors_by_cause(w)) for w in windows]  # (judged, their errors) per run
    lines: list[tuple[str, list[str]]] = [
        ("cards", [str(r.trial.cards) for r in runs]),
        ("verdict", [r.trial.verdict["label"] for r in runs]),
        ("offered QPS", [f"{r.trial.verdict['offered_qps']:.2f}" for r in runs]),
        ("completed QPS", [f"{r.trial.verdict['completed_qps']:.2f}" for r in runs]),
        (f"p{pct} TTFT of completed", [_ms(r.trial, f"ttft_p{pct}_s") for r in runs]),
        (f"p{pct} TPOT of completed", [_ms(r.trial, f"tpot_p{pct}_s") for r in runs]),
        ("errors", [_count(sum(c.count for c in cs), n) for n, cs in errors]),
    ]
    for verb, what in dict.fromkeys((c.verb, c.what) for _, cs in errors for c in cs):
        counts = [_count(_of(cs, verb, what), n) for n, cs in errors]
        lines.append((f"&nbsp;&nbsp;{verb}: {_e(what)}", counts))
    head = "".join(f'<th><a href="#{_e(r.trial.name)}">{_e(r.title)}</a></th>' for r in runs)
    body = "".join(
        f"<tr><th>{name}</th>{''.join(f'<td>{_e(v)}</td>' for v in values)}</tr>"
        for name, values in lines
    )
    return (
        "<h2>The runs side by side</h2><p>In each judged window (warm-up and cool-down out).</p>"
        f"<table><tr><th></th>{head}</tr>{body}</table>"
    )


def _of(causes: list[ErrorCause], verb: str, what: str) -> int:
    return sum(c.count for c in causes if (c.verb, c.what) == (verb, what))


def _count(n: int, of: int) -> str:
    return f"{n} ({100 * n / max(of, 1):.1f} %)"


def _ms(trial: Trial, stat: str) -> str:
    value = trial.verdict.get("stats", {}).get(stat, math.nan)
    return "none completed" if math.isnan(value) else f"{value * 1e3:.0f} ms"


def _sweep_table(sweep: list[Trial]) -> str:
    rows = "".join(
        f"<tr><td>{t.target_qps:.2f}</td><td>{t.verdict['completed_qps']:.2f}</td>"
        f"<td>{t.verdict['label']}</td></tr>"
        for t in sorted(sweep, key=lambda t: t.target_qps)
    )
    return (
        "<h2>Rate sweep</h2><table><tr><th>offered QPS</th><th>completed QPS</th>"
        f"<th>verdict</th></tr>{rows}</table>"
    )


def _e(text: Any) -> str:
    return html.escape(str(text))
