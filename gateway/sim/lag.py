"""The simulator's watch on its own event loop: a card that cannot keep real time delivers tokens
late, and any proof run against it measures the simulator instead of the plan."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram

LAG_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class LagMonitor:
    """Samples how late the loop wakes a sleeper every `interval_s`; exports the histogram
    `sim_event_loop_lag_seconds` and warns (at most every `warn_every_s`) when a wake-up is later
    than `warn_s`."""

    def __init__(
        self,
        *,
        interval_s: float = 0.01,
        warn_s: float = 0.02,
        warn_every_s: float = 5.0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.warn_s = warn_s
        self.warn_every_s = warn_every_s
        self._warn = warn or _stderr
        self.histogram = Histogram(
            "sim_event_loop_lag_seconds",
            "How late the simulator's event loop woke a timer; above a few ms, simulated "
            "timings are no longer real.",
            buckets=LAG_BUCKETS,
            registry=None,
        )
        self.worst_s = 0.0  # since the last warning
        self.late = 0  # wake-ups later than warn_s since the last warning
        self.samples = 0

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self.histogram)

    async def run(self) -> None:
        """Sample forever; cancel the task to stop."""
        loop = asyncio.get_running_loop()
        last_warning = -math.inf
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = loop.time()
            self.observe(now - due)
            if self.late and now - last_warning >= self.warn_every_s:
                self._warn(self.report())
                last_warning, self.worst_s, self.late = now, 0.0, 0

    def observe(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self.histogram.observe(lag_s)
        self.samples += 1
        if lag_s > self.warn_s:
            self.late += 1
            self.worst_s = max(self.worst_s, lag_s)

    def report(self) -> str:
        return (
            f"WARNING: the simulator's event loop is falling behind real time: {self.late} "
            f"wake-ups more than {self.warn_s * 1e3:.0f} ms late (worst {self.worst_s * 1e3:.0f} "
            "ms). Simulated TTFT and TPOT are not valid; serve fewer cards per process or send "
            "more tokens per event (--tokens-per-event)."
        )


def _stderr(message: str) -> None:
    print(f"cardinal sim: {message}", file=sys.stderr, flush=True)
