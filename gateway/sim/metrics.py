"""vLLM's metric names and buckets (vllm/v1/metrics/loggers.py), on an injected registry."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class CardMetrics:
    """The vLLM series one card exposes, labelled with its `model_name`."""

    def __init__(self, registry: CollectorRegistry, *, model_name: str) -> None:
        lab = {"labelnames": ("model_name",), "registry": registry}
        self._model = model_name
        self.running = Gauge("vllm:num_requests_running", "Requests in the batch.", **lab)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests queued.", **lab)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = 100%.", **lab)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", buckets=TTFT_BUCKETS, **lab
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Inter-token latency.", buckets=ITL_BUCKETS, **lab
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end latency.", buckets=E2E_BUCKETS, **lab
        )
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", **lab)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", **lab)

    def watch(
        self, *, running: Callable[[], float], waiting: Callable[[], float], kv: Callable[[], float]
    ) -> None:
        """Read the gauges from the engine at scrape time."""
        self.running.labels(self._model).set_function(running)
        self.waiting.labels(self._model).set_function(waiting)
        self.kv_usage.labels(self._model).set_function(kv)

    def first_token(self, *, prompt_tokens: int, ttft_s: float) -> None:
        self.prompt_tokens.labels(self._model).inc(prompt_tokens)
        self.generation_tokens.labels(self._model).inc()
        self.ttft.labels(self._model).observe(ttft_s)

    def next_token(self, *, itl_s: float) -> None:
        self.generation_tokens.labels(self._model).inc()
        self.itl.labels(self._model).observe(itl_s)

    def finished(self, *, e2e_s: float) -> None:
        self.e2e.labels(self._model).observe(e2e_s)
