"""The report directory of a proof run: index.html with PNG plots, and the raw records as CSV."""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path
from typing import Any

from gateway.planfile import PlanFile
from gateway.prove.trial import Trial


def write_report(
    out: Path,
    *,
    plan: PlanFile,
    main: Trial,
    binding: str,
    sweep: list[Trial],
    minimal: Trial | None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, and none needed
    rows = _records(main.records_csv)
    images = [
        _qps_plot(out / "qps.png", rows, main),
        _latency_plot(out / "latency.png", rows, main),
        _cards_plot(out / "cards.png", main),
    ]
    if sweep:
        images.append(_sweep_plot(out / "sweep.png", sweep, plan))
    page = out / "index.html"
    page.write_text(_html(plan, main, binding, sweep, minimal, images), encoding="utf-8")
    return page


def _records(path: Path) -> list[dict[str, float | str]]:
    with path.open(newline="") as f:
        return [
            {k: (v if k == "error" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def _qps_plot(path: Path, rows: list[dict[str, Any]], trial: Trial) -> Path:
    import matplotlib.pyplot as plt

    end = max((r["scheduled_s"] for r in rows), default=0.0)
    bins = list(range(int(end) + 2))
    offered = [r["scheduled_s"] for r in rows]
    done = [r["end_s"] for r in rows if not r["error"] and not math.isnan(r["end_s"])]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.hist(offered, bins=bins, histtype="step", label="offered (scheduled)")
    ax.hist(done, bins=bins, histtype="step", label="completed")
    lo, hi = trial.verdict["window"]
    ax.axvspan(lo, hi, alpha=0.1, color="green", label="judged window")
    ax.axhline(trial.target_qps, ls="--", color="gray", label=f"target {trial.target_qps:g} QPS")
    ax.set(xlabel="seconds", ylabel="requests per second", title="Offered vs completed")
    ax.legend(loc="lower right", fontsize=8)
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
        ax.set(xlabel="ms", ylabel="requests", title=f"{title} distribution")
    return _save(fig, path)


def _cards_plot(path: Path, trial: Trial) -> Path:
    import matplotlib.pyplot as plt

    last = trial.samples[-1].by_backend if trial.samples else {}
    first = trial.samples[0].by_backend if trial.samples else {}
    names = sorted(last)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(names, [last[n] - first.get(n, 0) for n in names])
    ax.set(ylabel="requests", title="Load per card (gateway_requests_total)")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _save(fig, path)


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


def _html(
    plan: PlanFile,
    main: Trial,
    binding: str,
    sweep: list[Trial],
    minimal: Trial | None,
    images: list[Path],
) -> str:
    w = plan.workload
    parts = [
        "<!doctype html><meta charset=utf-8><title>Cardinal proof</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "pre{background:#f4f4f4;padding:1em;overflow-x:auto}</style>",
        f"<h1>Cardinal proof: {_e(plan.model)} {_e(plan.quant)} on {main.cards} x "
        f"{_e(plan.gpu)}</h1>",
        f"<p>{w.target_qps:g} QPS target, {w.prompt_tokens} prompt / {w.output_tokens} "
        f"output tokens, TTFT &le; {w.ttft_slo_s:g} s, TPOT &le; {w.tpot_slo_s * 1e3:g} ms. "
        f"Plan: {plan.replicas} replicas at {plan.replica.capacity_qps} QPS each."
        "</p>",
        f"<h2>Verdict: {main.verdict['label']}</h2><pre>{_e(main.table)}</pre>",
        f"<p>Binding constraint: {_e(binding)}</p>",
    ]
    if minimal is not None:
        parts.append(
            f"<h2>One card fewer ({minimal.cards}): {minimal.verdict['label']}</h2>"
            f"<pre>{_e(minimal.table)}</pre>"
        )
    if sweep:
        rows = "".join(
            f"<tr><td>{t.target_qps:.2f}</td><td>{t.verdict['completed_qps']:.2f}</td>"
            f"<td>{t.verdict['label']}</td></tr>"
            for t in sorted(sweep, key=lambda t: t.target_qps)
        )
        parts.append(
            "<h2>Rate sweep</h2><table><tr><th>offered QPS</th><th>completed QPS</th>"
            f"<th>verdict</th></tr>{rows}</table>"
        )
    parts += [f'<p><img src="{p.name}" alt="{p.stem}"></p>' for p in images]
    parts.append(
        f'<p>Raw records: <a href="{main.records_csv.name}">{main.records_csv.name}</a></p>'
    )
    return "\n".join(parts)


def _e(text: Any) -> str:
    return html.escape(str(text))
