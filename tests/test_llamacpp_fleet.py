"""A planned llama.cpp fleet for real: the rendered `llama-server` command line starts the real
server, and the Locust scenario judges two of them behind the gateway."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import yaml

from gateway.cli import main
from gateway.prove.fleet import free_ports, gateway
from gateway.prove.trial import card_mean, run_trial, sample
from tests.llamacpp_harness import binary, llama_servers, server_args
from tests.process_harness import CARDINAL, SHORT_RUN

PLAN = [
    "plan", "--model", "deepseek-r1-distill-qwen-1.5b", "--quant", "q4_k_m", "--gpu", "l4",
    "--engine", "llama.cpp", "--target-qps", "10", "--prompt-tokens", "64",
    "--output-tokens", "32", "--ttft-slo", "1s", "--tpot-slo", "50ms",
    "--kv-dtype", "q8_0",  # so the line carries -fa on -ctk q8_0 -ctv q8_0 too
]  # fmt: skip
VLLM_PLAN = [
    "plan", "--model", "deepseek-r1-distill-qwen-1.5b", "--quant", "awq", "--gpu", "a10g",
    "--target-qps", "2", "--prompt-tokens", "64", "--output-tokens", "16", "--ttft-slo", "1s",
    "--tpot-slo", "50ms",
]  # fmt: skip


def rendered_command(deploy: Path) -> list[str]:
    script = (deploy / "engine.sh").read_text(encoding="utf-8")
    return shlex.split(script.split("exec ", 1)[1].replace("\\\n", " "))


def for_this_machine(words: list[str], *, model: Path, port: int) -> list[str]:
    """The rendered words with only what must change here: the binary's path, the local tiny
    GGUF for `-hf` (no downloads), a port, loopback, and one thread each (two servers share a
    small machine with the gateway and Locust: llama.cpp's default of a thread per core makes
    them spin against each other). GPU flags (-ngl) stay: the CPU build accepts them and
    offloads nothing."""
    out = [str(binary()), "-t", "1", "-tb", "1"]
    rest = iter(words[1:])
    for w in rest:
        if w == "-hf":
            out += ["-m", str(model)]
            next(rest)
        elif w == "--host":
            out += ["--host", "127.0.0.1"]
            next(rest)
        else:
            out.append(str(port) if w == "${PORT:-8000}" else w)
    return out


def test_rendered_llama_server_starts_and_locust_judges_the_fleet(
    tiny_model: Path, tmp_path: Path
) -> None:
    plan = tmp_path / "fleet.yaml"
    assert main([*PLAN, "-o", str(plan)]) == 0
    assert main(["render", str(plan), "-o", str(tmp_path / "deploy"), "--only", "engine.sh"]) == 0
    words = rendered_command(tmp_path / "deploy")
    assert words[0] == "llama-server"
    assert {"-fa", "-ctk", "-np", "-c", "--metrics"} <= set(words)
    base = free_ports(2)
    argvs = [for_this_machine(words, model=tiny_model, port=base + i) for i in range(2)]
    with llama_servers(argvs, logs=tmp_path) as servers:
        urls = [s.url for s in servers]
        with gateway(plan, backends=urls, log=tmp_path / "gateway.log") as gw:
            # 10 QPS makes 2 s Poisson blocks: a 2-10 s window holds whole blocks, so the
            # offered rate is exact and the verdict judges the fleet, not sampling noise
            trial = run_trial(
                name="llamacpp",
                plan_path=plan,
                gateway=gw,
                cards=urls,
                target_qps=10,
                duration_s=12,
                out_dir=tmp_path,
                progress=print,
                scenario=["--warmup", "2s", "--cooldown", "2s", "--min-window", "2s"]
                + ["--min-requests", "10"],
            )
        log = servers[0].output()
    print(f"\n{trial.table}")
    assert "model loaded" in log
    assert trial.code in (0, 1), f"no verdict (exit {trial.code}): {trial.table}"
    assert trial.verdict["completed"] >= 60
    assert trial.verdict["stats"]["output_tokens_mean"] >= 31


def test_prove_with_backends_uses_the_engines_own_slots(tiny_model: Path, tmp_path: Path) -> None:
    """A vLLM plan (170 seqs a card) proved on llama-servers: one with 4 slots on /slots, one
    that publishes neither /slots nor /metrics."""
    plan = tmp_path / "fleet.yaml"
    assert main([*VLLM_PLAN, "-o", str(plan)]) == 0
    base = free_ports(2)
    with_slots = [w for w in server_args(tiny_model, port=base, parallel=4) if w != "--metrics"]
    silent = [w for w in server_args(tiny_model, port=base + 1, parallel=2) if w != "--metrics"]
    with llama_servers([with_slots, [*silent, "--no-slots"]], logs=tmp_path) as servers:
        urls = [s.url for s in servers]
        run = subprocess.run(
            [str(CARDINAL), "prove", str(plan), "--backends", *urls, "--duration", "8s"],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
            env={**os.environ, **SHORT_RUN},
        )
        figures = sample(urls[0], urls, 0)
    print(run.stdout)
    # a verdict of any kind: 8 s is too short a window to judge 2 QPS, and not the point here
    assert "proof at 2.00 QPS on 2 card(s): " in run.stdout, run.stdout + run.stderr
    assert f"{urls[0]}: 4 slots (its /slots); the plan's batch is 170" in run.stdout
    assert f"{urls[1]}: no slot count published; the plan's batch is 170" in run.stdout
    config = yaml.safe_load((tmp_path / "report" / "gateway.yaml").read_text())
    assert [b["max_inflight"] for b in config["backends"]] == [4, 170]
    assert figures.running == [0.0, None] and figures.waiting == [None, None]
    assert card_mean(figures.running[1:]) == "unknown"
