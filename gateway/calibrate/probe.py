"""Decode and prefill speed of one OpenAI-compatible engine, measured from the client over HTTP.

Decode: `batch` streams started together, each `tokens` long (`ignore_eos`, so none stops early);
a stream's rate is its tokens after the first over the time between its first and last token, and
the card's rate at that batch is the sum. Prefill: one long prompt with `max_tokens` 1, so the
answer time is (almost) all prompt processing. Every prompt is fresh random words, so no prefix
cache can serve it. Where the engine reports its own timings (llama.cpp's `timings`), they are
kept beside the client's figures.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

# 3 letters + a space: one token in BPE vocabularies (as in loadtest/qps.py)
WORDS = ("the", "and", "for", "you", "are", "was", "but", "not", "all", "can", "her", "one", "our",
         "out", "day", "get", "has", "him", "his", "how")  # fmt: skip


MIN_PREFILL_WORDS = 64


class ProbeError(RuntimeError):
    pass


@dataclass(frozen=True, kw_only=True)
class Stream:
    """One streamed completion as the client saw it."""

    tokens: int
    first_s: float  # first non-empty text, from the send
    last_s: float
    engine_tokens_per_s: float | None  # llama.cpp's timings.predicted_per_second

    @property
    def decode_tokens_per_s(self) -> float:
        span = self.last_s - self.first_s
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


def prompt(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words)))


async def served_model(http: aiohttp.ClientSession, url: str) -> str:
    """The first model id the engine lists at /v1/models."""
    try:
        async with http.get(url + "/v1/models") as r:
            body = await r.json(content_type=None)
        return str(body["data"][0]["id"])
    except (aiohttp.ClientError, TimeoutError, KeyError, IndexError, TypeError, ValueError) as e:
        raise ProbeError(f"{url}/v1/models named no model ({e}); pass --model") from None


async def engine_of(http: aiohttp.ClientSession, url: str) -> str:
    """llama.cpp or vllm, from the metric names the engine exposes (unknown without /metrics)."""
    try:
        async with http.get(url + "/metrics") as r:
            text = await r.text() if r.status == 200 else ""
    except (aiohttp.ClientError, TimeoutError):
        text = ""
    return "llama.cpp" if "llamacpp:" in text else "vllm" if "vllm:" in text else "unknown"


async def stream(
    http: aiohttp.ClientSession, url: str, *, model: str, prompt_text: str, tokens: int
) -> Stream:
    body = {
        "model": model,
        "prompt": prompt_text,
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "temperature": 1.0,
    }
    t0 = time.monotonic()
    first = last = None
    chunks, usage, engine_rate = 0, None, None
    async with http.post(url + "/v1/completions", json=body) as r:
        if r.status != 200:
            raise ProbeError(f"{url}/v1/completions answered {r.status}: {(await r.text())[:200]}")
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"].get("completion_tokens")
            timings = event.get("timings") or {}
            engine_rate = timings.get("predicted_per_second", engine_rate)
            if any(c.get("text") for c in event.get("choices") or []):
                last = time.monotonic() - t0
                first = last if first is None else first
                chunks += 1
    if first is None or last is None:
        raise ProbeError(f"{url}: a stream of {tokens} tokens carried no text")
    return Stream(
        tokens=usage or chunks, first_s=first, last_s=last, engine_tokens_per_s=engine_rate
    )


async def decode_point(
    http: aiohttp.ClientSession, url: str, *, model: str, batch: int, tokens: int, seed: int
) -> dict[str, Any]:
    """The card's decode rate with `batch` streams running together."""
    rng = random.Random(seed)
    streams = await asyncio.gather(
        *(
            stream(http, url, model=model, prompt_text=prompt(16, rng), tokens=tokens)
            for _ in range(batch)
        )
    )
    rates = [s.decode_tokens_per_s for s in streams]
    engine = [s.engine_tokens_per_s for s in streams if s.engine_tokens_per_s]
    return {
        "batch": batch,
        "tokens_per_s": round(sum(rates), 2),
        "tpot_s": round(1 / statistics.mean(rates), 5) if all(rates) else 0.0,
        "engine_tokens_per_s": round(sum(engine), 2) if len(engine) == batch else None,
    }


async def prefill(
    http: aiohttp.ClientSession, url: str, *, model: str, words: int, repeats: int, seed: int
) -> dict[str, Any]:
    """Prompt tokens per second on a long prompt: the median of `repeats` runs, one at a time.
    A prompt the engine's context cannot hold (400) is halved until it fits."""
    rng = random.Random(seed)
    client, engine, prompt_tokens = [], [], 0
    while len(client) < repeats:
        body = {"model": model, "prompt": prompt(words, rng), "max_tokens": 1}
        t0 = time.monotonic()
        async with http.post(url + "/v1/completions", json=body) as r:
            data = await r.json(content_type=None)
        elapsed = time.monotonic() - t0
        if r.status == 400 and "context" in str(data) and words > MIN_PREFILL_WORDS:
            words //= 2
            continue
        if r.status != 200:
            raise ProbeError(f"{url}/v1/completions answered {r.status}: {str(data)[:200]}")
        prompt_tokens = int((data.get("usage") or {}).get("prompt_tokens") or words)
        client.append(prompt_tokens / elapsed)
        rate = (data.get("timings") or {}).get("prompt_per_second")
        if rate:
            engine.append(rate)
    return {
        "prompt_tokens": prompt_tokens,
        "tokens_per_s": round(statistics.median(client), 1),
        "engine_tokens_per_s": round(statistics.median(engine), 1) if engine else None,
    }
