"""What arrives, and when: a trace replayed, or arrivals drawn at a rate with lengths drawn from
a distribution (a fixed count, a percentile list, or a trace's own lengths).

The draws are loadtest's own (`loadtest.verdict.arrivals`, `loadtest.tracefile`), so the
traffic a what-if runs is the traffic `loadtest/qps.py` offers with the same flags.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.planner.errors import PlanError
from loadtest import tracefile
from loadtest.verdict import arrivals

ARRIVALS = ("poisson", "gamma", "constant", "trace")


class WorkloadError(PlanError):
    """Shown as the flag: `prompt_tokens` as --prompt-tokens."""


@dataclass(frozen=True)
class Lengths:
    """Token counts to draw from: a fixed count, or points (percentile, tokens) of a
    distribution interpolated between them, or an empirical sample (a trace's lengths)."""

    fixed: int = 0
    points: tuple[tuple[float, int], ...] = ()
    sample: tuple[int, ...] = ()

    def draw(self, rng: random.Random) -> int:
        if self.sample:
            return self.sample[rng.randrange(len(self.sample))]
        if self.points:
            return max(1, round(_quantile(self.points, 100 * rng.random())))
        return self.fixed


def _quantile(points: Sequence[tuple[float, int]], p: float) -> float:
    """Piecewise linear through the points; below the first or above the last, flat."""
    ps = [q for q, _ in points]
    i = bisect.bisect_left(ps, p)
    if i == 0:
        return points[0][1]
    if i == len(points):
        return points[-1][1]
    (p0, v0), (p1, v1) = points[i - 1], points[i]
    return v0 + (v1 - v0) * (p - p0) / (p1 - p0)


def parse_lengths(text: str, *, field: str, trace: list[tracefile.Arrival] | None) -> Lengths:
    """`512` (fixed), `p50=512,p90=2048,p99=6000` (a distribution), or `trace` (the trace's)."""
    text = text.strip()
    flag = "--" + field.replace("_", "-")
    if text == "trace":
        if trace is None:
            raise WorkloadError(f"`{flag} trace` needs --trace FILE", field=field)
        key = "prompt_tokens" if "prompt" in field else "output_tokens"
        return Lengths(sample=tuple(max(1, getattr(a, key)) for a in trace))
    if text.isdigit():
        if int(text) <= 0:
            raise WorkloadError(f"`{flag}` must be > 0, got {text}", field=field)
        return Lengths(fixed=int(text))
    points = []
    for part in text.split(","):
        name, _, value = part.strip().partition("=")
        try:
            p, n = float(name.lstrip("p")), int(value)
        except ValueError:
            raise WorkloadError(
                f"`{flag}` must be a token count, `trace`, or percentiles like "
                f"p50=512,p90=2048; got {part.strip()!r}",
                field=field,
            ) from None
        if not name.startswith("p") or not 0 <= p <= 100 or n <= 0:
            raise WorkloadError(
                f"`{flag}`: {part.strip()!r} must be pN=TOKENS with 0 <= N <= 100, TOKENS > 0",
                field=field,
            )
        points.append((p, n))
    points.sort()
    if any(a[1] > b[1] for a, b in zip(points, points[1:], strict=False)):
        raise WorkloadError(
            f"`{flag}`: the token counts must grow with the percentile", field=field
        )
    if len({p for p, _ in points}) != len(points):
        raise WorkloadError(f"`{flag}`: a percentile is given twice", field=field)
    return Lengths(points=tuple(points))


@dataclass(frozen=True)
class Arrival:
    t: float  # seconds from the start
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, kw_only=True)
class Workload:
    """`arrival` "trace": the trace's times and lengths, `speed` times as fast. Otherwise draws at
    `rate` per second (loadtest's arrivals, `cv` for gamma) with lengths from `prompt` and
    `output`, all from `seed`."""

    arrival: str
    rate: float = 0.0
    cv: float = 1.0
    seed: int = 0
    prompt: Lengths = Lengths(fixed=512)
    output: Lengths = Lengths(fixed=256)
    trace: tuple[tracefile.Arrival, ...] = ()
    speed: float = 1.0
    index: int = 0  # this shard's share of `total`: every total-th trace row, rate / total
    total: int = 1

    def __post_init__(self) -> None:
        if self.arrival not in ARRIVALS:
            raise WorkloadError(
                f"`--arrival` must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}",
                field="arrival",
            )
        if self.arrival == "trace" and len(self.trace) < 2:
            raise WorkloadError("`--arrival trace` needs --trace FILE", field="arrival")
        if self.arrival != "trace" and not self.rate > 0:
            raise WorkloadError("`--target-qps` must be > 0", field="target_qps")

    @property
    def mean_rate(self) -> float:
        if self.arrival == "trace":
            return tracefile.mean_rate(list(self.trace)) * self.speed
        return self.rate

    def __iter__(self) -> Iterator[Arrival]:
        if self.arrival == "trace":
            rows = list(self.trace)
            for t, a in tracefile.replay(
                rows, start=0.0, speed=self.speed, index=self.index, total=self.total
            ):
                yield Arrival(t, max(1, a.prompt_tokens), max(1, a.output_tokens))
            return
        seed = self.seed + 7919 * self.index
        rng = random.Random(seed + 1)
        rate, kind = self.rate / self.total, self.arrival
        for t in arrivals(rate, start=0.0, seed=seed, kind=kind, cv=self.cv):
            yield Arrival(t, self.prompt.draw(rng), self.output.draw(rng))
