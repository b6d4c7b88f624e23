"""guidellm and AIPerf run unchanged against `cardinal serve` over a simulated card, as their users
run them (issue 23): each completes its run, and what it reports agrees with the card's own
histograms and the gateway's, read before and after."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.prove.fleet import free_ports, wait_ready
from tests import load_tools
from tests.process_harness import CARDINAL
from tests.test_loadtest import _card_totals
from tests.test_prove import _plan

MODEL = "deepseek-r1-distill-qwen-7b"
RATE, SECONDS, PROMPT, OUTPUT = 2, 12, 128, 32


def _need(tool: load_tools.Tool) -> Path:
    """The tool's command; fails (never skips) when it is missing: `make test` installs it."""
    found, tokenizer = load_tools.executable(tool), load_tools.tokenizer()
    if found is None or tokenizer is None:
        pytest.fail(
            f"{tool.name} {tool.version} or the tokenizer is not in {load_tools.cache_dir()}: "
            "run `make load-tools` (it installs both tools once)",
            pytrace=False,
        )
    return found


@dataclass(frozen=True)
class Stack:
    gateway: str
    card: str


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """One simulated card (one token an event) behind `cardinal serve --plan`."""
    plan = _plan(tmp_path, 10)
    card_port, gw_port = free_ports(1), free_ports(1)
    card = subprocess.Popen(
        [str(CARDINAL), "sim", "--plan", str(plan), "--port", str(card_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    card_url, gw_url = f"http://127.0.0.1:{card_port}", f"http://127.0.0.1:{gw_port}"
    gw = subprocess.Popen(
        [str(CARDINAL), "serve", "--plan", str(plan), "--backends", card_url]
        + ["--listen", f"127.0.0.1:{gw_port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(card_url + "/health", card)
        wait_ready(gw_url + "/health", gw)
        yield Stack(gw_url, card_url)
    finally:
        for proc in (gw, card):
            proc.terminate()
            proc.wait(timeout=15)


def _run(argv: list[str], *, env: dict[str, str], timeout: float = 180) -> None:
    run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    print(run.stdout[-3000:], run.stderr[-3000:])
    assert run.returncode == 0, run.stderr[-3000:]


def _delta(url: str, before: dict[str, float]) -> dict[str, float]:
    time.sleep(0.3)  # what was cut at the end reaches the counters
    return {k: v - before.get(k, 0.0) for k, v in _card_totals(url).items()}


def _mean(delta: dict[str, float], name: str) -> float:
    return delta[f"{name}_sum"] / delta[f"{name}_count"]


def _agrees(
    *, requests: float, ttft_s: float, itl_s: float, tokens: float, card: dict, gw: dict
) -> None:
    """A tool's figures against the card's and the gateway's own, over the same run."""
    card_itl = _mean(card, "vllm:inter_token_latency_seconds")
    gw_ttft = _mean(gw, "gateway_time_to_first_token_seconds")
    print(
        f"  {requests:g} requests (card {card['vllm:e2e_request_latency_seconds_count']:g}); "
        f"ITL {itl_s * 1e3:.2f} ms (card {card_itl * 1e3:.2f}); TTFT mean {ttft_s * 1e3:.1f} ms "
        f"(gateway {gw_ttft * 1e3:.1f}, card "
        f"{_mean(card, 'vllm:time_to_first_token_seconds') * 1e3:.1f})"
    )
    assert requests == card["vllm:e2e_request_latency_seconds_count"]  # every completed one
    assert tokens == pytest.approx(OUTPUT)  # the server's usage, as the card generated it
    assert itl_s == pytest.approx(card_itl, rel=0.05)
    assert ttft_s == pytest.approx(
        gw_ttft, abs=0.01
    )  # the tool's clock starts before the gateway's


def test_guidellm_runs_unchanged_against_the_gateway(stack: Stack, tmp_path: Path) -> None:
    """guidellm 0.8.1 checks GET /health first (it aborted on the 404 before), then a constant
    rate (its poisson profile floods the server in 0.8.1: a start-up race in its scheduler)."""
    guidellm = _need(load_tools.GUIDELLM)
    out = tmp_path / "benchmarks.json"
    card, gw = _card_totals(stack.card), _card_totals(stack.gateway)
    backend = f"kind=openai_http,target={stack.gateway},model={MODEL}"
    backend += ",request_format=/v1/chat/completions"
    _run(
        [
            str(guidellm),
            "run",
            "--backend",
            backend,
            "--profile",
            f"kind=constant,rate={RATE}",
            "--constraint",
            f"kind=max_duration,seconds={SECONDS}",
            "--tokenizer",
            f"kind=huggingface_auto,model={load_tools.tokenizer()}",
            "--data",
            f"kind=synthetic_text,prompt_tokens={PROMPT},output_tokens={OUTPUT}",
            "--seed",
            "kind=static,value=42",
            "--output",
            f"kind=json,path={out}",
            "--disable-console-interactive",
        ],  # fmt: skip
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "GUIDELLM__MAX_WORKER_PROCESSES": "2",  # of this machine's 2 cores
        },  # fmt: skip
    )
    card_d, gw_d = _delta(stack.card, card), _delta(stack.gateway, gw)
    (bench,) = json.loads(out.read_text())["benchmarks"]
    m = bench["metrics"]
    done = m["request_totals"]["successful"]
    print(f"guidellm: {done} requests; card {card_d['vllm:e2e_request_latency_seconds_count']:g}")
    assert done >= RATE * SECONDS * 0.8
    _agrees(
        requests=done,
        ttft_s=m["time_to_first_token_ms"]["successful"]["mean"] / 1e3,
        itl_s=m["inter_token_latency_ms"]["successful"]["mean"] / 1e3,
        tokens=m["output_token_count"]["successful"]["mean"],
        card=card_d,
        gw=gw_d,
    )


def test_aiperf_runs_unchanged_against_the_gateway(stack: Stack, tmp_path: Path) -> None:
    """AIPerf 0.13.0 at a Poisson rate, scraping the gateway's /metrics as it runs (its default).
    Its token counts are the server's (--use-server-token-count): its own would count with a
    tokenizer that is not the card's. Run without HF_HUB_OFFLINE: with it set, 0.13.0 takes a
    tokenizer directory for a hub name and refuses it; it reaches nothing but loopback here."""
    aiperf = _need(load_tools.AIPERF)
    out = tmp_path / "aiperf"
    card, gw = _card_totals(stack.card), _card_totals(stack.gateway)
    env = {
        k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
    }
    _run(
        [
            str(aiperf),
            "profile",
            "--model",
            MODEL,
            "--url",
            stack.gateway,
            "--endpoint-type",
            "chat",
            "--streaming",
            "--tokenizer",
            str(load_tools.tokenizer()),
            "--use-server-token-count",
            "--request-rate",
            str(RATE),
            "--arrival-pattern",
            "poisson",
            "--random-seed",
            "42",
            "--benchmark-duration",
            str(SECONDS),
            "--benchmark-grace-period",
            "10",
            "--prompt-input-tokens-mean",
            str(PROMPT),
            "--prompt-input-tokens-stddev",
            "0",
            "--prompt-output-tokens-mean",
            str(OUTPUT),
            "--prompt-output-tokens-stddev",
            "0",
            "--extra-inputs",
            "ignore_eos:true",
            "--no-gpu-telemetry",
            "--ui-type",
            "none",
            "--output-artifact-dir",
            str(out),
        ],  # fmt: skip
        env=env,
    )
    card_d, gw_d = _delta(stack.card, card), _delta(stack.gateway, gw)
    m = json.loads((out / "profile_export_aiperf.json").read_text())
    assert m["time_to_first_token"]["unit"] == m["inter_token_latency"]["unit"] == "ms"
    done = m["request_count"]["avg"]
    print(f"aiperf: {done} requests; card {card_d['vllm:e2e_request_latency_seconds_count']:g}")
    assert done >= RATE * SECONDS * 0.5  # Poisson: the count itself is drawn
    _agrees(
        requests=done,
        ttft_s=m["time_to_first_token"]["avg"] / 1e3,
        itl_s=m["inter_token_latency"]["avg"] / 1e3,
        tokens=m["output_sequence_length"]["avg"],
        card=card_d,
        gw=gw_d,
    )
