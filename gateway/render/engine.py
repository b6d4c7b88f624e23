"""Engine command lines from the plan: vLLM's `vllm serve`, llama.cpp's `llama-server`, Ollama."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from gateway.planner.capacity import SLOT_ALIGN, slot_tokens
from gateway.render.checkpoint import gguf_repo
from gateway.render.errors import RenderError
from gateway.render.fleet import ENGINE_PORT, Fleet, fleet_from_plan

# The newest vLLM release with a published image found: v0.31.0 (its manifest digest resolved from
# Docker Hub on 2026-10-07; v0.31.1 was an rc with no image). Its ENTRYPOINT is `vllm serve`
# (docker/Dockerfile, target vllm-openai), so the arguments start with the model; the images of
# early 2026 ran `python3 -m vllm.entrypoints.openai.api_server`, which ignores a positional model.
VLLM_IMAGE = "vllm/vllm-openai:v0.31.0"
# llama.cpp's CI (.github/workflows/docker.yml) tags each image it publishes from master twice:
# `server-cuda`, which floats, and `server-cuda-b<build number>`. b11176 is `server-cuda` of
# 2026-09-26 (CUDA 12.8.1, digest sha256:1f4b9cf5...); its ENTRYPOINT is /app/llama-server.
LLAMA_IMAGE = "ghcr.io/ggml-org/llama.cpp:server-cuda-b11176"
VLLM_KV = {"auto": None, "f16": None, "fp16": None, "bf16": None, "fp8": "fp8"}
LLAMA_KV = {"auto": None, "f16": None, "fp16": None, "bf16": "bf16", "q8_0": "q8_0", "q4_0": "q4_0"}
# Ollama pulls GGUF only: the nearest GGUF quantization to a vLLM one, for a single-card trial
OLLAMA_TAG = {"fp16": "F16", "fp8": "Q8_0", "int8": "Q8_0", "awq": "Q4_K_M", "gptq": "Q4_K_M"}


def vllm_args(fleet: Fleet, *, port: int = ENGINE_PORT) -> list[str]:
    """`vllm serve` arguments, as vLLM's engine-arguments page names them: the model first, as
    `vllm serve` takes it (its `--model` is deprecated, vllm/utils/argparse_utils.py)."""
    s = fleet.settings
    args = [fleet.checkpoint.repo, "--served-model-name", fleet.model]
    args += ["--host", "0.0.0.0", "--port", str(port)]
    args += ["--tensor-parallel-size", str(s["tensor_parallel_size"])]
    if s["pipeline_parallel_size"] > 1:
        args += ["--pipeline-parallel-size", str(s["pipeline_parallel_size"])]
    args += ["--max-num-seqs", str(s["max_num_seqs"]), "--max-model-len", str(s["max_model_len"])]
    if s.get("max_num_batched_tokens"):  # version 1 plans left it to vLLM's default
        args += ["--max-num-batched-tokens", str(s["max_num_batched_tokens"])]
    args += ["--gpu-memory-utilization", f"{s['gpu_memory_utilization']:g}"]
    kv = _kv(VLLM_KV, s["kv_cache_dtype"])
    if kv:
        args += ["--kv-cache-dtype", kv]
    # awq/gptq checkpoints name their method in config.json and vLLM then picks the fast Marlin
    # kernels; forcing `--quantization awq` would select the slower ones. fp8 is quantized online.
    if fleet.quant == "fp8":
        args += ["--quantization", "fp8"]
    if is_r1(fleet.model):  # the parser alone: `--enable-reasoning` is gone (deprecated in 0.9)
        args += ["--reasoning-parser", "deepseek_r1"]
    return args


def is_r1(model: str) -> bool:
    """DeepSeek-R1 or one of its distills, which think in <think>...</think> before answering."""
    m = model.lower()
    return m == "deepseek-r1" or m.startswith(("deepseek-r1-", "deepseek-r1:"))


def slot_context(fleet: Fleet) -> int:
    """Tokens each llama-server slot holds: the plan's ctx_size / parallel, which the planner
    sizes for the request and its chat template (capacity.slot_tokens), and never less than that
    rule gives (a plan written before it sized slots at exactly prompt + output)."""
    s = fleet.settings
    given = s["ctx_size"] // max(1, s["parallel"])
    return max(slot_tokens(fleet.context_tokens), -(-given // SLOT_ALIGN) * SLOT_ALIGN)


def llama_server_args(
    fleet: Fleet, *, model_path: str | None = None, port: int = ENGINE_PORT
) -> list[str]:
    """`llama-server` flags; `-hf REPO:TAG` downloads the GGUF unless `model_path` is given."""
    s = fleet.settings
    cp = fleet.checkpoint
    args = ["-m", model_path] if model_path else ["-hf", f"{cp.repo}:{cp.gguf_tag}"]
    args += ["--alias", fleet.model, "--host", "0.0.0.0", "--port", str(port)]
    # null gpu_layers: the whole model fits, and 999 offloads every layer whatever the count
    args += ["-ngl", str(s["gpu_layers"] if s["gpu_layers"] is not None else 999)]
    args += ["-c", str(slot_context(fleet) * s["parallel"]), "-np", str(s["parallel"])]
    if s.get("n_cpu_moe"):
        args += ["--n-cpu-moe", str(s["n_cpu_moe"])]
    if s.get("flash_attn"):
        args += ["-fa", "on"]
    kv = _kv(LLAMA_KV, s["cache_type"])
    if kv:
        args += ["-ctk", kv, "-ctv", kv]
    return [*args, "--metrics"]


def engine_args(fleet: Fleet, *, port: int = ENGINE_PORT) -> list[str]:
    return vllm_args(fleet, port=port) if fleet.is_vllm else llama_server_args(fleet, port=port)


def engine_image(fleet: Fleet) -> str:
    return VLLM_IMAGE if fleet.is_vllm else LLAMA_IMAGE


def _kv(table: Mapping[str, str | None], dtype: str) -> str | None:
    if dtype not in table:
        raise RenderError(
            f"KV cache type {dtype!r} has no flag for this engine ({', '.join(table)})",
            field="engine_settings.kv_cache_dtype",
        )
    return table[dtype]


def render_engine_script(plan: Mapping[str, Any]) -> str:
    """A shell script starting one replica's engine; run it once per replica (PORT differs)."""
    fleet = fleet_from_plan(plan)
    program = "vllm serve" if fleet.is_vllm else "llama-server"
    words = [shlex.quote(a) for a in engine_args(fleet, port=0)]
    body = " \\\n    ".join([program, *flag_lines(words)]).replace(
        "--port 0", '--port "${PORT:-8000}"'
    )
    return (
        "#!/bin/sh\n"
        f"# {fleet.model_name} {fleet.quant} on {fleet.gpus_per_replica} x {fleet.gpu}: "
        f"one replica of {fleet.replicas} ({fleet.engine}).\n"
        "# Written by `cardinal render`; start it once per replica, each on its own PORT.\n"
        f"{_checkpoint_note(fleet)}"
        f"exec {body}\n"
    )


def flag_lines(words: list[str]) -> list[str]:
    """`--flag value` on one line each, so a script reads like the engine's docs."""
    out: list[str] = []
    for w in words:
        if out and not w.startswith("-") and out[-1].startswith("-") and " " not in out[-1]:
            out[-1] += " " + w
        else:
            out.append(w)
    return out


def _checkpoint_note(fleet: Fleet) -> str:
    if fleet.checkpoint.exact:
        return ""
    return (
        f"# NOTE: the catalog knows no {fleet.quant} checkpoint of {fleet.model_name}: "
        f"{fleet.checkpoint.repo} stands in; replace it with one.\n"
    )


def render_modelfile(plan: Mapping[str, Any]) -> str:
    """An Ollama Modelfile for trying the model on one card."""
    fleet = fleet_from_plan(plan)
    s = fleet.settings
    if fleet.is_vllm:
        tag = OLLAMA_TAG.get(fleet.quant, "Q4_K_M")
        source = f"hf.co/{gguf_repo(fleet.model)}:{tag}"
        lines = [f"# Ollama serves GGUF only: {tag} is the nearest to the plan's {fleet.quant}."]
        params = {"num_ctx": min(s["max_model_len"], 8192)}
    else:
        source = f"hf.co/{fleet.checkpoint.repo}:{fleet.checkpoint.gguf_tag}"
        lines = []
        layers = s["gpu_layers"] if s["gpu_layers"] is not None else 999
        # num_ctx is per request in Ollama; llama-server's -c is shared by its -np slots
        params = {"num_ctx": slot_context(fleet), "num_gpu": layers}
        if s.get("n_cpu_moe"):
            lines.append(
                f"# The plan keeps {s['n_cpu_moe']} layers' experts in host RAM (--n-cpu-moe); "
                "Ollama has no such knob, llama-server does."
            )
    head = [
        f"# Ollama Modelfile for {fleet.model_name} on one card, written by `cardinal render`.",
        f"# ollama create {fleet.model} -f Modelfile && ollama run {fleet.model}",
        *lines,
        f"FROM {source}",
    ]
    return "\n".join([*head, *(f"PARAMETER {k} {v}" for k, v in params.items())]) + "\n"
