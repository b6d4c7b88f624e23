"""The verdict of an open-loop LLM load run: pure functions over exact per-request records.

No Locust and no gevent here, so the same code judges a single process, a distributed run and the
unit tests. Times are wall-clock seconds (`time.time()`), comparable across worker processes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, INVALID = 0, 1, 2
SCHEDULE_LAG_LIMIT_S = 0.05  # p99 send delay beyond which the generator, not the fleet, is slow
# The generator's own delay (late sends, late reads) adds to every latency it measures: beyond this
# share of the tightest latency SLO (TTFT, e2e) it could turn a PASS into a FAIL on its own.
LAG_SHARE_OF_SLO = 0.2
SENT_SHARE_LIMIT = 0.97  # of the scheduled requests in the window
COMPLETED_SHARE_LIMIT = 0.97  # completed rate / offered rate
OFFERED_TOLERANCE = 0.10  # a window cuts arrival blocks: its offered rate may stray this far
BLOCK_ARRIVALS = 20  # arrivals per block: the rate is exact per block (see `arrivals`)
MIN_WINDOW_S = 10.0  # a shorter judged window says little about a fleet (--min-window)
TAIL_REQUESTS = 5  # the SLO percentile must rest on this many requests beyond it (--min-requests)
LIMIT_WIDTH = 34  # the verdict table's limit column (check_row)


def min_requests(percentile: float) -> int:
    """Requests a window needs so that TAIL_REQUESTS of them lie beyond the SLO percentile (100
    for p95, 500 for p99); at least 20."""
    if percentile >= 100:
        return 100
    return max(20, math.ceil(TAIL_REQUESTS / (1 - percentile / 100) - 1e-9))


def attainment_interval(met: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95 % interval of a share of `met` in `n` (how sure an attainment figure is)."""
    if n <= 0:
        return 0.0, 1.0
    p = met / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, kw_only=True)
class Settings:
    target_qps: float
    warmup_s: float
    cooldown_s: float
    ttft_slo_s: float | None
    tpot_slo_s: float | None
    e2e_slo_s: float | None
    percentile: float  # e.g. 95: the SLOs hold at this percentile
    attainment: float  # share of requests that must meet every SLO
    max_error_rate: float
    stream: bool = True
    min_window_s: float = MIN_WINDOW_S
    min_requests: int = 100  # in the window (min_requests(percentile) by default in scenario.py)
    concurrency: int = 0  # closed loop with this many requests in flight (0: open loop at the rate)
    trace: str = ""  # the trace replayed (its file name): the offered rate is the trace's own


@dataclass
class Record:
    """One request, as exact as the generator can measure it."""

    scheduled: float
    sent: float = math.nan
    first: float = math.nan  # first non-empty content delta
    end: float = math.nan
    tokens: int = 0  # the answer's own count (its usage), else the content deltas counted
    error: str = ""  # empty: answered in full
    finished: bool = False
    second: float = math.nan  # second non-empty content delta
    prompt_tokens: int = 0  # as the answer's usage gave them (0: it gave none)
    events: int = 0  # content deltas the client counted (a delta may hold several tokens)

    @property
    def ok(self) -> bool:
        return self.finished and not self.error

    @property
    def ttft(self) -> float:
        return self.first - self.scheduled

    @property
    def tpot(self) -> float:
        return (self.end - self.first) / (self.tokens - 1) if self.tokens > 1 else 0.0

    @property
    def e2e(self) -> float:
        return self.end - self.scheduled

    @property
    def ttst(self) -> float:
        """Time to the second token, from the first (AIPerf's "time to second token")."""
        return self.second - self.first

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def arrivals(
    rate: float,
    *,
    start: float,
    seed: int,
    kind: str = "poisson",
    edges: Sequence[float] = (),
    cv: float = 1.0,
) -> Iterator[float]:
    """Intended start times from `start` on, forever.

    Poisson arrivals are drawn as a Poisson process conditioned on its count per block of about
    BLOCK_ARRIVALS arrivals (at least 1 s): each block gets exactly rate x block arrivals (the
    fraction carried over) at uniform random times. Within a block the bursts are Poisson's, while
    the offered rate cannot drift from the target the way a short run of free exponential gaps
    does (+-5 % over 400 requests). `edges` (seconds after `start`: the judged window's ends)
    fall on block boundaries, so the window holds whole blocks at any rate: its offered rate is
    the target's to within one request.

    Gamma arrivals (`kind` "gamma", gaps with coefficient of variation `cv`: 1 is Poisson, 3 is
    bursty) are spaced within a block by gamma gaps of shape 1/cv^2 scaled to the block: the count
    per block stays exact, and the bursts are those of the gamma process at scales below a block.
    Scaling to the block narrows the gaps' spread (to sqrt(n / ((n + 1) / cv^2 + 1)) for n a
    block), so a gamma block holds BLOCK_ARRIVALS x cv^2 arrivals: 180 at cv 3, whose gaps then
    vary by 2.9, not 2.4."""
    rng = random.Random(seed)
    owed = 0.0
    per_block = BLOCK_ARRIVALS * (max(1.0, cv * cv) if kind == "gamma" else 1.0)
    for t0, block_s in _blocks(max(1.0, per_block / rate), sorted(e for e in edges if e > 0)):
        owed += rate * block_s
        n = int(owed)
        owed -= n
        t0 += start
        if kind == "constant":
            times = [t0 + i * block_s / n for i in range(n)]
        elif kind == "gamma":
            gaps = [rng.gammavariate(1 / cv**2, 1.0) for _ in range(n + 1)]
            scale, at, times = block_s / sum(gaps), t0, []
            for gap in gaps[:n]:
                at += gap * scale
                times.append(at)
        else:
            times = sorted(t0 + rng.random() * block_s for _ in range(n))
        yield from times


def ramp_arrivals(
    rate: float, *, ramp_s: float, start: float, edges: Sequence[float] = (), **kw: Any
) -> Iterator[float]:
    """`arrivals` whose rate rises linearly from 0 to `rate` over `ramp_s`, then holds: the
    arrivals at the full rate in operational time u, mapped to t = sqrt(2 ramp_s u) before u =
    ramp_s / 2 and to t = u + ramp_s / 2 after it. Edges at or after the ramp's end still fall on
    block boundaries, so a window after the ramp offers the rate exactly."""
    if ramp_s <= 0:
        yield from arrivals(rate, start=start, edges=edges, **kw)
        return
    half = ramp_s / 2
    shifted = [e - half for e in edges if e >= ramp_s]
    for u in arrivals(rate, start=0.0, edges=shifted, **kw):
        yield start + (math.sqrt(2 * ramp_s * u) if u < half else u + half)


def _blocks(block_s: float, edges: list[float]) -> Iterator[tuple[float, float]]:
    """(start, length) of each block: up to each edge in whole blocks of about `block_s`, then
    `block_s` each, forever."""
    t = 0.0
    for edge in edges:
        n = max(1, round((edge - t) / block_s))
        for i in range(n):
            yield t + i * (edge - t) / n, (edge - t) / n
        t = edge
    while True:
        yield t, block_s
        t += block_s


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    limit: str
    ok: bool


@dataclass
class Verdict:
    code: int
    window: tuple[float, float]
    scheduled: int
    sent: int
    completed: int
    offered_qps: float
    sent_qps: float
    completed_qps: float
    checks: list[Check] = field(default_factory=list)
    validity: list[Check] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return {PASS: "PASS", FAIL: "FAIL", INVALID: "INVALID"}[self.code]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["label"] = self.label
        return d


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; +inf for an empty list (nothing met anything)."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def percentile_interval(values: list[float], p: float, z: float = 1.96) -> tuple[float, float]:
    """A distribution-free 95 % interval of the p-th percentile: the order statistics whose ranks
    bound the binomial count of values below it (normal approximation). The upper end is +inf
    where too few values lie above the percentile to bound it (p99.9 of 500 requests)."""
    n = len(values)
    if not n:
        return math.inf, math.inf
    ordered, q = sorted(values), p / 100
    half = z * math.sqrt(n * q * (1 - q))
    low, high = math.floor(n * q - half), math.ceil(n * q + half) + 1  # 1-based ranks
    return ordered[max(low, 1) - 1], ordered[high - 1] if high <= n else math.inf


def finite(data: Any) -> Any:
    """JSON any parser takes: NaN and infinities (nothing measured, no bound) become null."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


def lag_limit(s: Settings) -> float:
    """How late the generator may read what arrived, at the SLO percentile, before its delay is a
    noticeable share of what it judges: LAG_SHARE_OF_SLO of the tightest TTFT / e2e SLO, at most
    SCHEDULE_LAG_LIMIT_S. (TPOT is a difference of two reads; a steady delay cancels in it.)"""
    slos = [x for x in (s.ttft_slo_s if s.stream else None, s.e2e_slo_s) if x is not None]
    return min([SCHEDULE_LAG_LIMIT_S, *(LAG_SHARE_OF_SLO * x for x in slos)])


def judge(
    records: list[Record],
    s: Settings,
    *,
    start: float,
    stop: float,
    cpu_overloaded: bool = False,
    loop_lag: Sequence[tuple[float, float]] | None = None,
) -> Verdict:
    """PASS when, at the offered rate, enough requests meet every SLO, the completed rate reaches
    the target and the queue is not growing; INVALID when the generator could not keep its own
    schedule or was slow to read the answers (then the latencies measure the generator).
    `loop_lag`: (wall-clock time, how long a byte that arrived waited for the generator to read
    it) samples (loadtest/probe.py); those in the judged window are judged at the SLO
    percentile. None: not measured (no check)."""
    lo, hi = start + s.warmup_s, stop - s.cooldown_s
    window = [r for r in records if lo <= r.scheduled < hi]
    span = max(hi - lo, 1e-9)
    sent = [r for r in window if not math.isnan(r.sent)]
    done = [r for r in window if r.ok]
    v = Verdict(
        code=PASS,
        window=(lo - start, hi - start),
        scheduled=len(window),
        sent=len(sent),
        completed=len(done),
        offered_qps=len(window) / span,
        sent_qps=len(sent) / span,
        completed_qps=len(done) / span,
    )
    v.validity = _validity(window, sent, s, span=span, cpu_overloaded=cpu_overloaded)
    if loop_lag is not None:
        v.validity.append(_loop_lag_check([lag for t, lag in loop_lag if lo <= t < hi], s))
    v.checks = _checks(window, done, s, v)
    v.stats = _stats(done, s, span=span)
    met = sum(_meets(r, s) for r in window)
    v.stats["attainment_low"], v.stats["attainment_high"] = attainment_interval(met, len(window))
    v.stats["goodput_qps"] = met / span  # requests a second that met every SLO
    if not all(c.ok for c in v.validity):
        v.code = INVALID
    elif not all(c.ok for c in v.checks):
        v.code = FAIL
    return v


def _validity(
    window: list[Record], sent: list[Record], s: Settings, *, span: float, cpu_overloaded: bool
) -> list[Check]:
    lag = percentile([r.sent - r.scheduled for r in sent], 99)
    schedule = [] if s.concurrency else _schedule_checks(window, sent, s, span=span, lag=lag)
    if s.trace:  # the trace's bursts set the window's rate, not the mean it was scaled to
        schedule = [c for c in schedule if c.name != "offered QPS"]
    return [
        Check(
            "measurement window",
            f"{span:.1f} s",
            f">= {s.min_window_s:g} s",
            span >= s.min_window_s - 1e-6 and bool(window),
        ),
        Check(
            "requests judged",
            f"{len(window)}",
            f">= {s.min_requests} (p{s.percentile:g} on {TAIL_REQUESTS})",
            len(window) >= s.min_requests,
        ),
        *schedule,
        Check(
            "generator CPU", "over 90 %" if cpu_overloaded else "ok", "< 90 %", not cpu_overloaded
        ),
    ]


def _schedule_checks(
    window: list[Record], sent: list[Record], s: Settings, *, span: float, lag: float
) -> list[Check]:
    """Did the open loop offer what it meant to, on time (a closed loop has no schedule)."""
    return [
        Check(
            "offered QPS",
            f"{len(window) / span:.2f}",
            f"target {s.target_qps:g} +-{OFFERED_TOLERANCE:.0%}",
            abs(len(window) / span / s.target_qps - 1) <= OFFERED_TOLERANCE,
        ),
        Check(
            "requests sent on time",
            f"{len(sent) / max(len(window), 1):.1%}",
            f">= {SENT_SHARE_LIMIT:.0%} of scheduled",
            len(sent) >= SENT_SHARE_LIMIT * len(window),
        ),
        Check(
            "schedule lag p99",
            _ms(lag),
            f"<= {_ms(SCHEDULE_LAG_LIMIT_S)}",
            lag <= SCHEDULE_LAG_LIMIT_S,
        ),
    ]


def _loop_lag_check(lags: list[float], s: Settings) -> Check:
    """The receive side: a reply that arrives while the generator is busy (parsing other streams,
    or starved of CPU) is timed when the loop gets to it; the probe's bytes wait just as long."""
    value = percentile(lags, s.percentile) if lags else math.nan
    shown = "not sampled" if not lags else f"{value * 1e3:.1f} ms"
    limit = lag_limit(s)
    why = f" ({LAG_SHARE_OF_SLO:.0%} of SLO)" if limit < SCHEDULE_LAG_LIMIT_S else ""
    return Check(
        f"generator loop lag p{s.percentile:g}",
        shown,
        f"<= {limit * 1e3:.3g} ms{why}",
        value <= limit,
    )


def _checks(
    window: list[Record],
    done: list[Record],
    s: Settings,
    v: Verdict,
) -> list[Check]:
    p = s.percentile
    keeps_up = Check(
        "completed QPS",
        f"{v.completed_qps:.2f}",
        f">= {COMPLETED_SHARE_LIMIT * v.offered_qps:.2f} (97% offered)",
        v.completed_qps >= COMPLETED_SHARE_LIMIT * v.offered_qps,
    )
    checks = [
        *([] if s.concurrency else [keeps_up]),  # a closed loop offers what completes
        Check(
            "SLO attainment",
            f"{sum(_meets(r, s) for r in window) / max(len(window), 1):.1%}",
            f">= {s.attainment:.0%}",
            sum(_meets(r, s) for r in window) >= s.attainment * len(window),
        ),
    ]
    for name, slo, values in (
        ("TTFT", s.ttft_slo_s if s.stream else None, [r.ttft for r in window if r.ok]),
        ("TPOT", s.tpot_slo_s if s.stream else None, [r.tpot for r in window if r.ok]),
        ("e2e", s.e2e_slo_s, [r.e2e for r in window if r.ok]),
    ):
        if slo is not None:
            value = percentile(values + [math.inf] * (len(window) - len(values)), p)
            checks.append(Check(f"p{p:g} {name}", _ms(value), f"<= {_ms(slo)}", value <= slo))
    errors = len(window) - len(done)
    rate = errors / max(len(window), 1)
    checks.append(
        Check("error rate", f"{rate:.1%}", f"<= {s.max_error_rate:.1%}", rate <= s.max_error_rate)
    )
    if s.concurrency:
        return checks  # no queue can grow past the requests in flight
    rise, limit = latency_trend(window, s)
    checks.append(
        Check(
            "queue not growing",
            f"{_ms(rise)} rise",
            f"<= {_ms(limit)} (median, 1st-3rd third)",
            rise <= limit,
        )
    )
    return checks


def _meets(r: Record, s: Settings) -> bool:
    if not r.ok:
        return False
    limits = (
        (r.ttft, s.ttft_slo_s if s.stream else None),
        (r.tpot, s.tpot_slo_s if s.stream else None),
        (r.e2e, s.e2e_slo_s),
    )
    return all(slo is None or value <= slo for value, slo in limits)


def latency_trend(window: list[Record], s: Settings) -> tuple[float, float]:
    """(rise of the median wait from the first to the last third of the window, allowed rise).

    The wait is TTFT (e2e without streaming); a request not answered counts as infinitely late.
    A fleet that keeps up holds it flat; a growing queue adds (offered / served - 1) x elapsed to
    every later wait. Requests in flight swing too much with batching to show this in a short
    window; their wait does not."""
    ordered = sorted(window, key=lambda r: r.scheduled)
    third = len(ordered) // 3
    if third < 3:
        return 0.0, math.inf
    slo = s.ttft_slo_s if s.stream else s.e2e_slo_s

    def wait(r: Record) -> float:
        if not r.ok:
            return math.inf
        return r.ttft if s.stream else r.e2e

    first = percentile([wait(r) for r in ordered[:third]], 50)
    last = percentile([wait(r) for r in ordered[-third:]], 50)
    limit = 0.25 * slo if slo else max(first, 0.05)
    return last - first, limit


PERCENTILES = (0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)
COUNT_MISMATCH = 0.02  # client-counted tokens this far from the server's: say so


def _stats(done: list[Record], s: Settings, *, span: float) -> dict[str, float]:
    """Percentiles of TTFT, TPOT, e2e and time to second token (PERCENTILES and the SLO's);
    input, output and per-user tokens a second; the share by which the client's token count
    (content deltas) misses the server's (its usage)."""
    out: dict[str, float] = {}
    for name, values in (
        ("ttft", [r.ttft for r in done]),
        ("tpot", [r.tpot for r in done]),
        ("e2e", [r.e2e for r in done]),
        ("ttst", [r.ttst for r in done if not math.isnan(r.second)]),
    ):
        for p in sorted({*PERCENTILES, s.percentile}):
            out[f"{name}_p{p:g}_s"] = percentile(values, p) if values else math.nan
        low, high = percentile_interval(values, s.percentile) if values else (math.nan,) * 2
        out[f"{name}_p{s.percentile:g}_low_s"], out[f"{name}_p{s.percentile:g}_high_s"] = low, high
    out["output_tokens_mean"] = sum(r.tokens for r in done) / len(done) if done else math.nan
    with_prompt = [r for r in done if r.prompt_tokens]
    out["prompt_tokens_mean"] = (
        sum(r.prompt_tokens for r in with_prompt) / len(with_prompt) if with_prompt else math.nan
    )
    out["input_tokens_per_s"] = sum(r.prompt_tokens for r in done) / span
    out["output_tokens_per_s"] = sum(r.tokens for r in done) / span
    per_user = [
        (r.tokens - 1) / (r.end - r.first) for r in done if r.tokens > 1 and r.end > r.first
    ]
    out["per_user_tokens_per_s_p50"] = percentile(per_user, 50) if per_user else math.nan
    counted = [r for r in done if r.events]
    served = sum(r.tokens for r in counted)
    out["client_count_mismatch"] = (
        sum(abs(r.events - r.tokens) for r in counted) / served if served else 0.0
    )
    return out


def render(v: Verdict, s: Settings) -> str:
    """The verdict table printed at the end of a run."""
    lo, hi = v.window
    if s.concurrency:
        load = [
            f"  window {lo:.0f}-{hi:.0f} s, CLOSED LOOP with {s.concurrency} requests in flight: "
            f"{v.sent} sent, {v.completed} completed ({v.completed_qps:.2f} QPS, the rate the "
            "fleet gave back: none was offered)",
            "  a PASS says the SLOs hold with that many in flight, not at any arrival rate: a slow "
            "fleet slows a closed loop down and hides its queue (give --target-qps for that)",
        ]
    else:
        target = (
            f"trace {s.trace}, mean {s.target_qps:.3g}" if s.trace else f"target {s.target_qps:g}"
        )
        load = [
            f"  window {lo:.0f}-{hi:.0f} s: {v.scheduled} scheduled ({v.offered_qps:.2f} QPS "
            f"offered, {target}), {v.sent} sent ({v.sent_qps:.2f} QPS), "
            f"{v.completed} completed ({v.completed_qps:.2f} QPS)",
        ]
    lines = [
        f"Cardinal verdict: {v.label} (exit {v.code})",
        *load,
        "",
        check_row("check", "value", "limit", "result"),
    ]
    for c in v.checks + v.validity:
        lines.append(check_row(c.name, c.value, c.limit, "ok" if c.ok else "MISSED"))
    low, high = v.stats.get("attainment_low"), v.stats.get("attainment_high")
    if low is not None and high is not None:
        lines.append(
            f"  SLO attainment 95% interval {low:.1%}-{high:.1%} over {v.scheduled} requests"
        )
    lines.extend(_figures(v, s))
    failed = {c.name for c in v.validity if not c.ok}
    if v.code == INVALID and failed & {"measurement window", "requests judged"}:
        lines.append("")
        lines.append(
            f"  INVALID: too little was judged to tell (at least {s.min_window_s:g} s and "
            f"{s.min_requests} requests between warm-up and cool-down). Run longer (-t) or at "
            "a higher rate; --min-window and --min-requests (LOCUST_MIN_WINDOW, "
            "LOCUST_MIN_REQUESTS) set the bounds."
        )
    elif v.code == INVALID:
        lines.append("")
        lines.append(
            "  INVALID: the load generator could not keep its schedule or read the answers as "
            "they came, so these latencies measure the generator, not the fleet. Lower the rate "
            "per process, run distributed (--master / --worker), or give the generator a core of "
            "its own."
        )
    return "\n".join(lines)


def _figures(v: Verdict, s: Settings) -> list[str]:
    """What other load tools report beside the verdict: throughput, goodput, percentiles."""
    st = v.stats
    if not st or math.isnan(st.get("output_tokens_mean", math.nan)):
        return []
    lines = [
        f"  tokens/s: input {st['input_tokens_per_s']:.1f}, "
        f"output {st['output_tokens_per_s']:.1f}, "
        f"per user {st['per_user_tokens_per_s_p50']:.1f} (median); "
        f"goodput {st['goodput_qps']:.2f} requests/s meeting every SLO",
    ]
    pct = f"p{s.percentile:g}"
    for name in ("ttft", "tpot", "e2e", "ttst"):
        row = ", ".join(f"p{p:g} {_ms(st[f'{name}_p{p:g}_s'])}" for p in (0.1, 50, 99, 99.9))
        low, high = st[f"{name}_{pct}_low_s"], st[f"{name}_{pct}_high_s"]
        upper = _ms(high) if math.isfinite(high) else "unbounded (too few above it)"
        interval = f"{_ms(low)} to {upper}" if not math.isnan(low) else "none"
        lines.append(f"  {name.upper()}: {row}; {pct} 95% interval {interval}")
    mismatch = st.get("client_count_mismatch", 0.0)
    if mismatch > COUNT_MISMATCH:
        lines.append(
            f"  warning: the content deltas counted miss the server's token counts (usage) by "
            f"{mismatch:.0%}: the backend sends several tokens a delta, so figures per delta are "
            "not per token (TPOT here uses the server's counts)"
        )
    return lines


def check_row(name: str, value: str, limit: str, result: str) -> str:
    """One row of the verdict table. The limit column fits the longest limit written here
    ("<= 250 ms (median, 1st-3rd third)"), and a longer one is still followed by a space."""
    return f"  {name:<24}{value:>12}   {limit:<{LIMIT_WIDTH}} {result}"


def _ms(seconds: float) -> str:
    if math.isinf(seconds):
        return "inf"
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
