"""Trace replay: arrivals and lengths from a production trace, open loop, time- or rate-scaled.

Two formats: the Azure LLM inference trace's CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`,
Patel et al., "Splitwise", ISCA 2024; CC-BY 4.0) and JSONL of `{"t": seconds, "prompt_tokens": N,
"output_tokens": N}`. No Locust and no gevent here.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceError(ValueError):
    pass


@dataclass(frozen=True)
class Arrival:
    t: float  # seconds from the trace's first arrival
    prompt_tokens: int
    output_tokens: int


def read(path: str) -> list[Arrival]:
    """The trace's arrivals in time order, from its first; errors name the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise TraceError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path} is not UTF-8 text") from None
    first = text.lstrip()[:1]
    rows = _jsonl(text) if first == "{" else _azure(text, path)
    if len(rows) < 2:
        raise TraceError(f"{path} holds {len(rows)} arrival(s): a trace needs 2 or more")
    rows.sort(key=lambda a: a.t)
    t0 = rows[0].t
    return [Arrival(a.t - t0, a.prompt_tokens, a.output_tokens) for a in rows]


def _azure(text: str, path: str) -> list[Arrival]:
    reader = csv.reader(text.splitlines())
    head = next(reader, [])
    if tuple(c.strip() for c in head) != AZURE_COLUMNS:
        raise TraceError(
            f"{path}: line 1 must be {','.join(AZURE_COLUMNS)} (the Azure trace's CSV) or the "
            'file JSONL of {"t", "prompt_tokens", "output_tokens"}'
        )
    out = []
    for n, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) != 3:
            raise TraceError(f"line {n}: 3 columns expected, got {len(row)}")
        out.append(Arrival(_timestamp(row[0], n), _tokens(row[1], n), _tokens(row[2], n)))
    return out


def _timestamp(text: str, line: int) -> float:
    """`2023-11-16 18:17:03.9799600` (seven fractional digits) as seconds since the epoch."""
    whole, _, fraction = text.strip().partition(".")
    try:
        at = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
        return at.timestamp() + (float("0." + fraction) if fraction else 0.0)
    except ValueError:
        raise TraceError(
            f"line {line}: {text!r} is not a time like 2023-11-16 18:17:03.98"
        ) from None


def _tokens(text: str, line: int) -> int:
    try:
        n = int(text)
    except ValueError:
        raise TraceError(f"line {line}: {text!r} is not a token count") from None
    if n < 0:
        raise TraceError(f"line {line}: {n} tokens")
    return n


def _jsonl(text: str) -> list[Arrival]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"line {n} is not JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise TraceError(f"line {n} is not an object")
        t = row.get("t")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise TraceError(f"line {n}: `t` must be a number of seconds")
        counts = [row.get(k) for k in ("prompt_tokens", "output_tokens")]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise TraceError(f"line {n}: `prompt_tokens` and `output_tokens` must be counts")
        out.append(Arrival(float(t), *counts))
    return out


def mean_rate(rows: list[Arrival]) -> float:
    """Arrivals a second over the trace: (n - 1) gaps over its span."""
    span = rows[-1].t - rows[0].t
    return (len(rows) - 1) / span if span > 0 else math.inf


def replay(
    rows: list[Arrival], *, start: float, speed: float, index: int = 0, total: int = 1
) -> Iterator[tuple[float, Arrival]]:
    """(intended start, arrival) from `start` on, the trace `speed` times as fast, forever: at its
    end it starts again one mean gap later. Driver `index` of `total` takes every total-th row."""
    period = rows[-1].t + 1 / mean_rate(rows)
    lap = 0
    while True:
        for a in rows[index::total]:
            yield start + (lap * period + a.t) / speed, a
        lap += 1
