"""What a what-if measures: per minute and over the run, in histograms fine enough for exact-looking
percentiles (0.5 % wide bins: a percentile is within 0.25 % of the exact one) at any request
count, and, when asked, every request's record.

A request is counted in the minute it ended (completed, rejected or failed), as a Prometheus
histogram observed at the end of a request counts it; arrivals in the minute they arrived.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

BIN = math.log(1.005)  # histogram bins: 0.5 % apart
LOWEST_S = 1e-5


class LogHistogram:
    __slots__ = ("counts", "n")

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0

    def add(self, value: float) -> None:
        self.counts[int(math.log(max(value, LOWEST_S) / LOWEST_S) / BIN)] += 1
        self.n += 1

    def merge(self, other: LogHistogram) -> None:
        self.counts.update(other.counts)
        self.n += other.n

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1), at its bin's middle; NaN when empty."""
        if not self.n:
            return math.nan
        rank = q * (self.n - 1)
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen > rank:
                return LOWEST_S * math.exp((b + 0.5) * BIN)
        return math.nan


@dataclass
class Window:
    """One minute (or the whole run)."""

    arrived: int = 0
    completed: int = 0
    met: int = 0  # completed within both SLOs
    rejected: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    ttft: LogHistogram = field(default_factory=LogHistogram)
    tpot: LogHistogram = field(default_factory=LogHistogram)
    e2e: LogHistogram = field(default_factory=LogHistogram)
    tokens: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)

    def merge(self, w: Window) -> None:
        self.arrived += w.arrived
        self.completed += w.completed
        self.met += w.met
        self.rejected.update(w.rejected)
        self.failed.update(w.failed)
        for name in ("ttft", "tpot", "e2e"):
            getattr(self, name).merge(getattr(w, name))
        self.tokens += w.tokens
        self.samples.extend(w.samples)

    @property
    def ended(self) -> int:
        return self.completed + sum(self.rejected.values()) + sum(self.failed.values())

    def summary(self, minute: int | None = None) -> dict[str, Any]:
        ended = self.ended
        out: dict[str, Any] = {} if minute is None else {"minute": minute}
        out |= {
            "arrived": self.arrived,
            "completed": self.completed,
            "rejected": sum(self.rejected.values()),
            "failed": sum(self.failed.values()),
            "slo_attainment": self.met / ended if ended else None,
            "output_tokens": self.tokens,
        }
        for name in ("ttft", "tpot", "e2e"):
            h = getattr(self, name)
            for q in (50, 95, 99):
                out[f"{name}_p{q}_s"] = _finite(h.quantile(q / 100))
        for key in ("cards_up", "cards_present", "queued", "running", "waiting"):
            values = [s[key] for s in self.samples]
            out[f"{key}_mean"] = sum(values) / len(values) if values else None
        out["queued_max"] = max((s["queued"] for s in self.samples), default=None)
        return out


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


class Stats:
    def __init__(self, *, ttft_slo_s: float, tpot_slo_s: float, records: bool = False) -> None:
        self.ttft_slo_s = ttft_slo_s
        self.tpot_slo_s = tpot_slo_s
        self.minutes: dict[int, Window] = {}
        self._per_second: Counter[int] = Counter()
        self.records: list[dict[str, Any]] | None = [] if records else None

    def _minute(self, t: float) -> Window:
        m = int(t // 60)
        w = self.minutes.get(m)
        if w is None:
            w = self.minutes[m] = Window()
        return w

    def arrived(self, t: float) -> None:
        self._minute(t).arrived += 1
        self._per_second[int(t)] += 1

    def rate(self, now: float, window_s: float) -> float:
        """Arrivals a second over the last `window_s` (whole seconds)."""
        n = int(window_s)
        last = int(now)
        return sum(self._per_second.get(s, 0) for s in range(last - n, last)) / n

    def completed(self, request: Any, first: float, last: float, tokens: int) -> None:
        w = self._minute(last)
        ttft, e2e = first - request.t, last - request.t
        tpot = (last - first) / (tokens - 1) if tokens > 1 else 0.0
        w.completed += 1
        w.tokens += tokens
        w.met += ttft <= self.ttft_slo_s and tpot <= self.tpot_slo_s
        w.ttft.add(ttft)
        w.tpot.add(tpot)
        w.e2e.add(e2e)
        if self.records is not None:
            self.records.append(
                {"id": request.id, "t": request.t, "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e,
                 "tokens": tokens, "error": ""}
            )  # fmt: skip

    def rejected(self, request: Any, t: float, reason: str) -> None:
        self._minute(t).rejected[reason] += 1
        self._record(request, reason)

    def failed(self, request: Any, t: float, reason: str) -> None:
        self._minute(t).failed[reason] += 1
        self._record(request, reason)

    def _record(self, request: Any, reason: str) -> None:
        if self.records is not None:
            nan = math.nan
            self.records.append(
                {"id": request.id, "t": request.t, "ttft_s": nan, "tpot_s": nan, "e2e_s": nan,
                 "tokens": 0, "error": reason}
            )  # fmt: skip

    def sample(self, t: float, **values: float) -> None:
        self._minute(t).samples.append({"t": t, **values})

    def total(self) -> Window:
        out = Window()
        for w in self.minutes.values():
            out.merge(w)
        return out
