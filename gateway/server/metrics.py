"""The gateway's Prometheus series (each defined below, with its help), on an injected registry."""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from gateway.server.backend import Backend

# LLM latencies span milliseconds (a cached short prompt) to minutes (a long answer under load).
TTFT_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0,
    60.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    1.0, 2.5,
)  # fmt: skip
E2E_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0,
    300.0, 600.0,
)  # fmt: skip
QUEUE_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip


class GatewayMetrics:
    """Every `gateway_*` series. Labelled children are cached: a request touches a handful."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = {"registry": registry}
        self.requests = Counter(
            "gateway_requests", "Requests answered.", ("model", "backend", "code"), **r
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds", "End-to-end latency seen by the gateway.",
            ("model",), buckets=E2E_BUCKETS, **r,
        )  # fmt: skip
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds", "Time to the first streamed token.",
            ("model",), buckets=TTFT_BUCKETS, **r,
        )  # fmt: skip
        self.itl = CountedHistogram(
            "gateway_inter_token_latency_seconds", "Time between streamed tokens.",
            ("model",), buckets=ITL_BUCKETS, registry=registry,
        )  # fmt: skip
        self.tokens = Counter("gateway_tokens", "Tokens served.", ("model", "kind"), **r)
        self.inflight = Gauge("gateway_inflight_requests", "Requests in flight.", ("backend",), **r)
        self.queue_depth = Gauge("gateway_queue_depth", "Requests waiting for a slot.", **r)
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds", "Time waiting for a slot.", buckets=QUEUE_BUCKETS, **r
        )
        self.backend_up = Gauge("gateway_backend_up", "1 if in rotation.", ("backend",), **r)
        self.retries = Counter(
            "gateway_retries", "Attempts moved to another backend.", ("backend", "reason"), **r
        )
        self.rejected = Counter(
            "gateway_rejected_requests", "Requests refused by admission.", ("reason",), **r
        )
        self.stream_errors = Counter(
            "gateway_stream_errors", "Streams cut after the first byte.", ("backend",), **r
        )
        self.send_timeouts = Counter(
            "gateway_send_timeouts", "Streams cut: the client read nothing for the send timeout.",
            **r,
        )  # fmt: skip
        self.overhead = Histogram(
            "gateway_overhead_seconds", "Gateway time per request, queue and upstream excluded.",
            buckets=OVERHEAD_BUCKETS, **r,
        )  # fmt: skip
        self.limits_backend = Gauge(
            "gateway_limits_backend", "1 for the store per-key limits use now.", ("store",), **r
        )
        self.redis_errors = Counter("gateway_redis_errors", "Failed calls to Redis.", **r)
        self.reloads = Counter("gateway_config_reloads", "Configuration reloads.", ("result",), **r)
        self.connections = Gauge("gateway_open_connections", "Client connections open.", **r)
        self.refused = Counter(
            "gateway_refused_connections",
            "Connections closed at once: over the cap (total, or per_client address).",
            ("reason",), **r,
        )  # fmt: skip
        self.deadline_misses = Counter(
            "gateway_deadline_misses", "Attempts past a deadline (timeouts.first_byte_s, total_s).",
            ("backend", "stage"), **r,
        )  # fmt: skip
        self.worker_restarts = Counter(
            "gateway_worker_restarts", "Worker processes restarted after they died.", **r
        )
        self.inflating = Gauge(
            "gateway_inflating_bodies", "Compressed request bodies being inflated now.", **r
        )
        self.inflation_queue = Gauge(
            "gateway_inflation_queue_depth", "Compressed request bodies waiting to be inflated.",
            **r,
        )  # fmt: skip
        self._children: dict[tuple[Any, ...], Any] = {}

    def watch(self, backends: Sequence[Backend], *, queue_depth: Callable[[], float]) -> None:
        """Gauges read live state at scrape time, so requests never pay for them."""
        self.watch_backends(backends)
        self.queue_depth.set_function(queue_depth)

    def watch_inflater(self, *, running: Callable[[], float], waiting: Callable[[], float]) -> None:
        self.inflating.set_function(running)
        self.inflation_queue.set_function(waiting)

    def watch_backends(self, backends: Sequence[Backend]) -> None:
        for b in backends:
            self.inflight.labels(b.name).set_function(lambda b=b: b.inflight)
            self.backend_up.labels(b.name).set_function(lambda b=b: 1.0 if b.up else 0.0)

    def unwatch(self, backend: Backend) -> None:
        """A backend left the config (a reload): its series go with it."""
        for gauge in (self.inflight, self.backend_up):
            with contextlib.suppress(KeyError):
                gauge.remove(backend.name)

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c


class CountedHistogram:
    """A histogram whose children take `observe(value, count)`: the tokens that arrive in one
    read share one gap, and a saturated backend sends dozens a read. prometheus_client's
    Histogram takes observations one at a time (two locked increments each, 12 % of the
    gateway's CPU on a saturated stream); this one files a read's tokens in one step. It is
    exported like any histogram (`_bucket`, `_count`, `_sum`), read on the event loop that
    writes it, so it takes no lock."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self._children: dict[tuple[str, ...], CountedHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> CountedHistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = CountedHistogramChild(self.bounds)
        return child

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            running, buckets = 0, []
            for le, n in zip(self._le, child.counts, strict=True):
                running += n
                buckets.append((le, running))
            family.add_metric(list(values), buckets, child.sum)
        yield family


class CountedHistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """`count` observations of `value` (`le` buckets: a value on a bound counts in it)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += count
        self.sum += value * count
