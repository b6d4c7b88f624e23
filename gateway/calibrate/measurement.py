"""One card measured: decode speed at several batch sizes, prefill speed, and the highest rate
that meets the SLOs (the open-loop rate search of `cardinal prove --sweep`, run directly against
the card with the Locust scenario). The result is the calibration file's content."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway.calibrate import calibration, probe
from gateway.prove.proof import SWEEP_PRECISION, SWEEP_STEP, SweepVoid, search_rate
from gateway.prove.trial import Trial, run_trial, wait_idle

# The rate search starts at this share of what the best decode point could sustain with no
# prefill and no queueing (decode tokens/s / output tokens): a real card lands below that ceiling.
START_SHARE = 0.5


@dataclass(frozen=True, kw_only=True)
class CalibrateOptions:
    backend: str
    model: str | None = None  # default: the first the engine lists
    prompt_tokens: int
    output_tokens: int
    ttft_slo_s: float
    tpot_slo_s: float
    gpus: int = 1  # cards behind the backend URL (a tensor-parallel replica has several)
    batches: tuple[int, ...] = (1, 2, 4, 8)
    decode_tokens: int = 64
    prefill_words: int = 1024
    duration_s: float = 30.0  # of each rate-search trial
    max_trials: int = 8
    start_qps: float | None = None  # default: from the decode measurement
    plan: str | None = None  # the plan file the workload came from, recorded as provenance
    work_dir: Path


def calibrate(o: CalibrateOptions, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the card; the calibration file's content (validated). Raises ProbeError when the
    engine cannot be measured."""
    started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    model, engine, decode, prefill = asyncio.run(_speeds(o, say=say))
    start = o.start_qps or START_SHARE * max(p["tokens_per_s"] for p in decode) / o.output_tokens
    say(f"rate search from {start:.2f} QPS, {o.duration_s:.0f} s a trial, at most {o.max_trials}")
    try:
        trials = search_rate(lambda q: _trial(o, model, q, say=say), start, max_trials=o.max_trials)
    except SweepVoid as e:
        raise probe.ProbeError(str(e)) from None
    best = max((t.target_qps for t in trials if t.passed), default=0.0)
    return {
        "version": calibration.VERSION,
        "measured_at": started.isoformat().replace("+00:00", "Z"),
        "backend": {"url": o.backend, "model": model, "engine": engine, "gpus": o.gpus},
        "workload": {
            "prompt_tokens": o.prompt_tokens,
            "output_tokens": o.output_tokens,
            "ttft_slo_s": o.ttft_slo_s,
            "tpot_slo_s": o.tpot_slo_s,
            "plan": o.plan,
        },
        "decode": {
            "method": f"N streams started together, {o.decode_tokens} tokens each (ignore_eos); "
            "tokens after the first / (last - first token time) per stream, summed over streams",
            "points": decode,
        },
        "prefill": {
            "method": f"a fresh {o.prefill_words}-word prompt with max_tokens 1, one at a time; "
            "prompt tokens / answer time, median of 3",
            **prefill,
        },
        "capacity": {
            "method": "open-loop rate search with loadtest/qps.py (Poisson arrivals, streaming, "
            f"p95 SLOs met by 90 % of requests): bracket in steps of x{SWEEP_STEP:g}, bisect to "
            f"{SWEEP_PRECISION:.0%}, {o.duration_s:g} s a trial",
            "replica_qps": round(best, 3),
            "per_card_qps": round(best / o.gpus, 3),
            "trials": [_trial_row(t) for t in trials],
        },
    }


async def _speeds(
    o: CalibrateOptions, *, say: Callable[[str], None]
) -> tuple[str, str, list[dict[str, Any]], dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=5)
    # a connection per request: llama-server closes each one after a stream though it announced
    # keep-alive, and a pooled one could be dead; a connect costs well under a millisecond here
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        model = o.model or await probe.served_model(http, o.backend)
        engine = await probe.engine_of(http, o.backend)
        say(f"calibrating {o.backend} ({engine}, model {model})")
        # one short request first: the first one after a start pays for lazy allocations
        await probe.decode_point(http, o.backend, model=model, batch=1, tokens=4, seed=0)
        decode = []
        for i, batch in enumerate(o.batches):
            point = await probe.decode_point(
                http, o.backend, model=model, batch=batch, tokens=o.decode_tokens, seed=i + 1
            )
            say(
                f"  decode, batch {batch:3}: {point['tokens_per_s']:9.1f} tokens/s "
                f"(TPOT {point['tpot_s'] * 1e3:.1f} ms)"
            )
            decode.append(point)
        prefill = await probe.prefill(
            http, o.backend, model=model, words=o.prefill_words, repeats=3, seed=99
        )
        say(f"  prefill: {prefill['tokens_per_s']:,.0f} tokens/s on {prefill['prompt_tokens']}")
    return model, engine, decode, prefill


def _trial(o: CalibrateOptions, model: str, qps: float, *, say: Callable[[str], None]) -> Trial:
    wait_idle(o.backend, [o.backend])
    scenario = ["--model", model, "--prompt-tokens", str(o.prompt_tokens)]
    scenario += ["--output-tokens", str(o.output_tokens)]
    scenario += ["--ttft-slo", f"{o.ttft_slo_s:g}s", "--tpot-slo", f"{o.tpot_slo_s:g}s"]
    trial = run_trial(
        name=f"calibrate-{qps:.2f}",
        plan_path=None,
        gateway=o.backend,
        cards=[o.backend],
        target_qps=qps,
        duration_s=o.duration_s,
        out_dir=o.work_dir,
        progress=lambda line: None,
        scenario=scenario,
    )
    stats = trial.verdict.get("stats", {})
    say(
        f"  {qps:7.2f} QPS: {trial.verdict['label']:7} p95 TTFT {_ms(stats.get('ttft_p95_s'))}, "
        f"p95 TPOT {_ms(stats.get('tpot_p95_s'))}"
    )
    return trial


def _trial_row(t: Trial) -> dict[str, Any]:
    v, stats = t.verdict, t.verdict.get("stats", {})
    return {
        "target_qps": round(t.target_qps, 3),
        "verdict": v["label"],
        "completed_qps": round(v["completed_qps"], 3),
        "ttft_p95_s": _round(stats.get("ttft_p95_s")),
        "tpot_p95_s": _round(stats.get("tpot_p95_s"), 5),
    }


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or x != x or x in (float("inf"), float("-inf")) else round(x, nd)


def _ms(x: float | None) -> str:
    return "n/a" if _round(x) is None else f"{x * 1e3:.0f} ms"  # type: ignore[operator]
