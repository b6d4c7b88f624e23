"""Cost against capacity for the options of a search, as PNG bytes (the CLI writes the file)."""

from __future__ import annotations

import io
from typing import Any


def search_png(d: dict[str, Any], *, label_top: int = 5) -> bytes:
    """A scatter of monthly cost against fleet capacity, one colour per GPU type."""
    # imported here: matplotlib takes a second to import and only --plot needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    by_gpu: dict[str, list[dict[str, Any]]] = {}
    for o in d["options"]:
        by_gpu.setdefault(o["gpu"], []).append(o)
    for gpu, opts in by_gpu.items():
        ax.scatter(
            [o["capacity_qps"] for o in opts],
            [o["monthly_usd"] for o in opts],
            label=gpu,
            s=22,
            alpha=0.75,
        )
    labels: dict[tuple[float, float], list[str]] = {}
    for o in d["options"]:
        at = (o["capacity_qps"], o["monthly_usd"])
        if at in labels or len(labels) < label_top:
            labels.setdefault(at, []).append(f"#{o['rank']} {o['gpus']}x {o['gpu']} {o['quant']}")
    for n, (at, names) in enumerate(labels.items()):
        text = names[0] + (f" (+{len(names) - 1} same)" if len(names) > 1 else "")
        ax.annotate(text, at, textcoords="offset points", xytext=(8, -4 + 9 * n), fontsize=7)
    w = d["inputs"]["workload"]
    ax.axvline(w["target_qps"], color="grey", linestyle="--", linewidth=1, label="target QPS")
    ax.set_xlabel("fleet capacity (QPS within the SLOs)")
    ax.set_ylabel("USD per month")
    ax.set_title(
        f"{d['inputs']['model']}: {len(d['options'])} fleets meeting the SLOs at "
        f"{w['target_qps']:g} QPS"
    )
    if d["options"]:
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncols=2, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
