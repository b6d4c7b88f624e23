"""Engine load from each backend's own /metrics: vLLM's current and older names, llama.cpp's,
SGLang's (`--enable-metrics`: python/sglang/srt/metrics/collector.py).

Only the few series the engine-aware policy needs are read, line by line, without a full
Prometheus parse: a vLLM exposition is mostly histogram buckets we would throw away. llama.cpp's
throughput gauges (`prompt_tokens_seconds`, `predicted_tokens_seconds`) reset on every read, so
another scraper would corrupt them; throughput comes from its `_total` counters instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from gateway.server.backend import Backend, EngineLoad

RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred", "sglang:num_queue_reqs")
KV = (
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "llamacpp:kv_cache_usage_ratio",
    "sglang:token_usage",  # KV pool tokens in use over its size
)
GENERATED = (
    "vllm:generation_tokens_total",
    "llamacpp:tokens_predicted_total",
    "sglang:generation_tokens_total",
)
WANTED = {
    **dict.fromkeys(RUNNING, "running"),
    **dict.fromkeys(WAITING, "waiting"),
    **dict.fromkeys(KV, "kv"),
    **dict.fromkeys(GENERATED, "generated"),
}


def read_series(text: str) -> dict[str, float]:
    """The wanted figures, summed over label sets (several engines behind one server); KV usage
    is the fullest engine's, since that one refuses first."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        cut = line.find("{")
        name = line[:cut] if cut >= 0 else line.split(" ", 1)[0]
        kind = WANTED.get(name)
        if kind is None:
            continue
        rest = line[line.rfind("}") + 1 :] if cut >= 0 else line[len(name) :]
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        out[kind] = max(out.get(kind, 0.0), value) if kind == "kv" else out.get(kind, 0.0) + value
    return out


def engine_load(series: dict[str, float], *, previous: EngineLoad, generated_before: float | None,
                now: float) -> EngineLoad:  # fmt: skip
    """An EngineLoad from one scrape; the token rate from the counter's change since the last,
    and the batch cap once a scrape has found a queue: the largest batch seen so far, not the
    batch beside this queue. A request that arrives during a step waits until the step ends
    (vLLM counts it in `num_requests_waiting` meanwhile), so a queue beside 2 running may only
    mean a long prefill step; taken as the cap, it starved that card while the cards never
    scraped at such a moment took the fleet's traffic (`cardinal whatif`, docs/whatif.md)."""
    rate = None
    generated = series.get("generated")
    if generated is not None and generated_before is not None and now > previous.at_s:
        rate = max(0.0, generated - generated_before) / (now - previous.at_s)
    running, waiting = series.get("running"), series.get("waiting")
    peak = max(previous.peak_running, running or 0.0)
    slots = previous.slots
    if (waiting and running) or slots is not None:
        slots = peak  # a batch larger than the cap learnt so far raises it too
    return EngineLoad(
        running=running,
        waiting=waiting,
        kv_usage=series.get("kv"),
        tokens_per_s=rate,
        slots=slots,
        at_s=now,
        peak_running=peak,
    )


class Scraper:
    """Reads every healthy backend's /metrics each interval into `backend.load`."""

    def __init__(
        self, backends: Sequence[Backend], *, session: aiohttp.ClientSession, interval_s: float
    ) -> None:
        self.backends = backends
        self.session = session
        self._generated: dict[str, float] = {}
        self.reconfigure(interval_s)

    def reconfigure(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=max(1.0, interval_s * 2))

    async def run(self) -> None:
        while True:
            await asyncio.gather(*(self.scrape(b) for b in self.backends if b.up))
            await asyncio.sleep(self.interval_s)

    async def scrape(self, b: Backend) -> None:
        try:
            async with self.session.get(b.url + "/metrics", timeout=self._timeout) as r:
                if r.status != 200:
                    return
                text = await r.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return  # health is the prober's business; a missing /metrics only costs precision
        series = read_series(text)
        now = asyncio.get_running_loop().time()
        b.load = engine_load(
            series, previous=b.load, generated_before=self._generated.get(b.name), now=now
        )
        b.inflight_at_scrape = b.inflight
        if "generated" in series:
            self._generated[b.name] = series["generated"]
