"""What the servers measured themselves over a trial, beside the client's figures: the cards' and
the gateway's own `/metrics` histograms and counters, read before the run and after it.

A histogram's percentile is Prometheus's `histogram_quantile` over the run's bucket increases
(linear within a bucket), so it is as coarse as the server's buckets; its mean (sum / count) is
exact. The figures cover the whole run, warm-up and cool-down included, as the client's column
beside them does.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.verdict import percentile

Metrics = dict[str, list[tuple[dict[str, str], float]]]  # name -> [(labels, value)]

# figure -> the histogram names an engine may give it, first found wins (vLLM, SGLang); llama.cpp
# publishes counters only
CARD_HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds"),
    "itl": (
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
        "sglang:inter_token_latency_seconds",
        "sglang:time_per_output_token_seconds",
    ),
    "e2e": ("vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds"),
}
CARD_COUNTERS = {
    "prompt_tokens": (
        "vllm:prompt_tokens_total",
        "sglang:prompt_tokens_total",
        "llamacpp:prompt_tokens_total",
    ),
    "output_tokens": (
        "vllm:generation_tokens_total",
        "sglang:generation_tokens_total",
        "llamacpp:tokens_predicted_total",
    ),
}
GATEWAY_HISTOGRAMS = {
    "ttft": ("gateway_time_to_first_token_seconds",),
    "itl": ("gateway_inter_token_latency_seconds",),
    "e2e": ("gateway_request_duration_seconds",),
}
QUANTILES = (50, 95, 99)


@dataclass(frozen=True)
class Histogram:
    """One histogram summed over its label sets (and over cards): cumulative counts by bound."""

    buckets: dict[float, float]  # upper bound (inf included) -> observations at or below it
    sum: float
    count: float

    def __sub__(self, before: Histogram) -> Histogram:
        return Histogram(
            {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.sum - before.sum,
            self.count - before.count,
        )

    def quantile(self, q: float) -> float:
        """Prometheus's histogram_quantile: linear within the bucket the rank falls in; the
        highest finite bound when it falls in +Inf; NaN with no observations."""
        if self.count <= 0:
            return math.nan
        rank, lower, below = q * self.count, 0.0, 0.0
        finite = [le for le in sorted(self.buckets) if math.isfinite(le)]
        for le in finite:
            n = self.buckets[le]
            if n >= rank:
                return lower + (le - lower) * ((rank - below) / (n - below) if n > below else 1)
            lower, below = le, n
        return finite[-1] if finite else math.nan


def histogram(m: Metrics, name: str) -> Histogram | None:
    """`name`'s buckets, sum and count summed over label sets; None when it is not there."""
    if name + "_count" not in m:
        return None
    buckets: dict[float, float] = {}
    for labels, value in m.get(name + "_bucket", []):
        le = float(labels.get("le", "inf"))
        buckets[le] = buckets.get(le, 0.0) + value
    total = sum(v for _, v in m.get(name + "_sum", []))
    return Histogram(buckets, total, sum(v for _, v in m[name + "_count"]))


def _merged(hists: Iterable[Histogram]) -> Histogram | None:
    out: Histogram | None = None
    for h in hists:
        if out is None:
            out = h
            continue
        bounds = out.buckets.keys() | h.buckets.keys()
        buckets = {le: out.buckets.get(le, 0.0) + h.buckets.get(le, 0.0) for le in bounds}
        out = Histogram(buckets, out.sum + h.sum, out.count + h.count)
    return out


def _first(m: Metrics, names: Sequence[str]) -> str | None:
    return next((n for n in names if n + "_count" in m or n in m), None)


def _histograms(pages: Sequence[Metrics], names: dict[str, Sequence[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for figure, candidates in names.items():
        found = [(m, _first(m, candidates)) for m in pages]
        out[figure] = _merged(h for m, n in found if n and (h := histogram(m, n)))
    return out


def cards_snapshot(pages: Sequence[Metrics]) -> dict[str, Any]:
    """The cards' histograms summed over their pages, and their token counters."""
    out = _histograms(pages, CARD_HISTOGRAMS)
    for figure, names in CARD_COUNTERS.items():
        values = [sum(v for _, v in m[n]) for m in pages if (n := _first(m, names))]
        out[figure] = sum(values) if values else None
    return out


def gateway_snapshot(m: Metrics) -> dict[str, Any]:
    """The gateway's histograms and `gateway_tokens_total` by kind."""
    out = _histograms([m], GATEWAY_HISTOGRAMS)
    for figure, kind in (("prompt_tokens", "prompt"), ("output_tokens", "completion")):
        values = [v for labels, v in m.get("gateway_tokens_total", []) if labels["kind"] == kind]
        out[figure] = sum(values) if "gateway_tokens_total" in m else None
    return out


def figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    """The run's increases as figures: per histogram its count, mean and QUANTILES; the token
    counters' increases. None where the server does not publish it (or it restarted)."""
    out: dict[str, float | None] = {}
    for figure in CARD_HISTOGRAMS:
        a, b = after.get(figure), before.get(figure)
        run = a - b if a is not None and b is not None else a
        ok = run is not None and run.count > 0
        out[f"{figure}_count"] = run.count if run is not None and run.count >= 0 else None
        out[f"{figure}_mean_s"] = run.sum / run.count if ok else None  # type: ignore[union-attr]
        for q in QUANTILES:
            out[f"{figure}_p{q}_s"] = run.quantile(q / 100) if ok else None  # type: ignore[union-attr]
    for figure in CARD_COUNTERS:
        a, b = after.get(figure), before.get(figure)
        out[figure] = a - (b or 0.0) if a is not None and a >= (b or 0.0) else None
    return out


def read_records(path: Path) -> list[dict[str, Any]]:
    """A trial's records CSV (loadtest/qps.py's columns), figures as floats; [] where none."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return [
                {k: (v if k == "error" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)
            ]
    except OSError:
        return []


def client_figures(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """The same figures from the client's records (loadtest/qps.py's CSV), every completed
    request of the run: TTFT and e2e per request; ITL as the card counts it, the time from the
    first to the last token over the gaps between tokens, summed over requests."""
    done = [r for r in rows if not r["error"] and math.isfinite(r["end_s"])]
    ttft = [r["ttft_s"] for r in done if math.isfinite(r["ttft_s"])]
    streamed = [r for r in done if r["tokens"] > 1 and math.isfinite(r["ttft_s"])]
    gaps = sum(r["tokens"] - 1 for r in streamed)
    decoding = sum(r["e2e_s"] - r["ttft_s"] for r in streamed)
    out: dict[str, float | None] = {
        "ttft_count": float(len(ttft)),
        "itl_count": float(gaps),
        "e2e_count": float(len(done)),
        "ttft_mean_s": sum(ttft) / len(ttft) if ttft else None,
        "itl_mean_s": decoding / gaps if gaps else None,
        "e2e_mean_s": sum(r["e2e_s"] for r in done) / len(done) if done else None,
        "prompt_tokens": sum(r.get("prompt_tokens", 0.0) for r in done),
        "output_tokens": sum(r["tokens"] for r in done),
    }
    for q in QUANTILES:
        out[f"ttft_p{q}_s"] = percentile(ttft, q) if ttft else None
        out[f"itl_p{q}_s"] = None  # per gap: the client sees deltas, not every token's time
        e2e = [r["e2e_s"] for r in done]
        out[f"e2e_p{q}_s"] = percentile(e2e, q) if e2e else None
    return out


SOURCES = ("client", "gateway", "cards")
ROWS = (  # (label, figure key, unit)
    ("requests completed", "e2e_count", ""),
    ("TTFT mean", "ttft_mean_s", "ms"),
    ("TTFT p50", "ttft_p50_s", "ms"),
    ("TTFT p95", "ttft_p95_s", "ms"),
    ("TTFT p99", "ttft_p99_s", "ms"),
    ("ITL mean (per token gap)", "itl_mean_s", "ms"),
    ("ITL p50", "itl_p50_s", "ms"),
    ("ITL p95", "itl_p95_s", "ms"),
    ("e2e mean", "e2e_mean_s", "ms"),
    ("e2e p95", "e2e_p95_s", "ms"),
    ("prompt tokens", "prompt_tokens", ""),
    ("output tokens", "output_tokens", ""),
)


def table(ground: dict[str, dict[str, float | None]]) -> list[tuple[str, list[str]]]:
    """The rows of the client / gateway / cards table: (label, one cell per source)."""
    return [
        (label, [_cell(ground.get(src, {}).get(key), unit) for src in SOURCES])
        for label, key, unit in ROWS
    ]


def render(ground: dict[str, dict[str, float | None]]) -> str:
    """The table as text, for the console."""
    head = ["measured over the whole run", *SOURCES]
    rows = [head, *([label, *cells] for label, cells in table(ground))]
    width = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) for c, w in zip(r, width, strict=True)]
        lines.append("  ".join([r[0].ljust(width[0]), *cells[1:]]))
    return "\n".join(lines)


def _cell(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * 1e3:.1f} ms" if unit == "ms" else f"{value:,.0f}"
