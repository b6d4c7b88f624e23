"""The simulator's watch on its own event loop: a card that cannot keep real time delivers tokens
late, and any proof run against it measures the simulator instead of the plan."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram

LAG_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
LATE_S = 0.010  # a wake-up later than this is late (a bucket edge above, so /metrics tells)


class LagMonitor:
    """Samples how late the loop wakes a sleeper every `interval_s` and exports the histogram
    `sim_event_loop_lag_seconds`. Warns when, over a window of `window_s`, more than 1 % of the
    wake-ups were later than `warn_s` (the p99 the simulator promises to keep).

    10 ms: tokens carry their step's timeline time, so a late wake-up delays that one event and
    not the ones after it. One request's mean TPOT does not move, and a p95 TTFT moves only if
    more than 5 % of first tokens are late. With 5 ms, the demo on this 2-core machine (four
    cards, the gateway and Locust on two cores) was voided by 5-11 of ~455 wake-ups in 5 s
    running 5-14 ms late."""

    def __init__(
        self,
        *,
        interval_s: float = 0.01,
        warn_s: float = LATE_S,
        window_s: float = 5.0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.warn_s = warn_s
        self.window_s = window_s
        self._warn = warn or _stderr
        self.histogram = Histogram(
            "sim_event_loop_lag_seconds",
            "How late the simulator's event loop woke a timer; above a few ms, simulated "
            "timings are no longer real.",
            buckets=LAG_BUCKETS,
            registry=None,
        )
        self._window = Window()

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self.histogram)

    async def run(self) -> None:
        """Sample forever; cancel the task to stop."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = loop.time()
            self.observe(now - due)
            if now - start >= self.window_s:
                if self._window.late > 0.01 * self._window.samples:
                    self._warn(self.report(now - start))
                start, self._window = now, Window()

    def observe(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self.histogram.observe(lag_s)
        w = self._window
        w.samples += 1
        if lag_s > self.warn_s:
            w.late += 1
            w.worst_s = max(w.worst_s, lag_s)

    def report(self, window_s: float) -> str:
        w = self._window
        return (
            f"WARNING: the simulator's event loop is falling behind real time: {w.late} of "
            f"{w.samples} wake-ups in the last {window_s:.1f} s were more than "
            f"{self.warn_s * 1e3:g} ms late (worst {w.worst_s * 1e3:.0f} ms). Simulated TTFT and "
            "TPOT are not valid; serve fewer cards per process or send more tokens per event "
            "(--tokens-per-event)."
        )


@dataclass
class Window:
    samples: int = 0
    late: int = 0
    worst_s: float = 0.0


def _stderr(message: str) -> None:
    print(f"cardinal sim: {message}", file=sys.stderr, flush=True)
