"""The engines' command lines as their current releases take them: `vllm serve MODEL` (vLLM's
`--model` is deprecated), DeepSeek-R1's reasoning parser, pinned images, and llama-server slots
with room for the chat template; the last checked against the real llama-server too."""

from __future__ import annotations

import copy
import json
import re
import shlex
import urllib.request
from pathlib import Path

import pytest

from gateway import planfile
from gateway.cli import main
from gateway.planner.capacity import TEMPLATE_TOKENS
from gateway.prove.fleet import free_ports
from gateway.render.bundle import render_all
from gateway.render.engine import (
    LLAMA_IMAGE,
    VLLM_IMAGE,
    engine_args,
    engine_image,
    llama_server_args,
    render_engine_script,
    render_modelfile,
    slot_context,
    vllm_args,
)
from gateway.render.fleet import fleet_from_plan
from tests.llamacpp_harness import binary, llama_servers
from tests.test_render import CASES, plan_of

VLLM_TAG = re.compile(r"vllm/vllm-openai:v(\d+)\.(\d+)\.(\d+)")
LLAMA_TAG = re.compile(r"ghcr\.io/ggml-org/llama\.cpp:server-cuda-b\d+")
ENGINE_IMAGE_LINE = re.compile(r"image: ((?:vllm/|ghcr\.io/ggml-org/)\S+)")
# a llama.cpp plan as `cardinal plan` writes it (tests/test_llamacpp_fleet.py's)
LLAMA_PLAN = [
    "plan", "--model", "deepseek-r1-distill-qwen-1.5b", "--quant", "q4_k_m", "--gpu", "l4",
    "--engine", "llama.cpp", "--target-qps", "10", "--prompt-tokens", "64",
    "--output-tokens", "32", "--ttft-slo", "1s", "--tpot-slo", "50ms",
]  # fmt: skip


def vllm_plan(model: str) -> dict:
    plan = copy.deepcopy(plan_of("vllm-awq"))
    plan["inputs"]["model"] = model
    return plan


def llama_plan(*, prompt: int, output: int, parallel: int) -> dict:
    """The golden llama.cpp plan with another workload, ctx_size as the planner writes it."""
    plan = copy.deepcopy(plan_of("llamacpp-moe-offload"))
    plan["inputs"]["workload"] |= {"prompt_tokens": prompt, "output_tokens": output}
    plan["engine_settings"] |= {"parallel": parallel, "ctx_size": (prompt + output) * parallel}
    return plan


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("case", ["vllm-awq", "vllm-tp8-fp8"])
def test_vllm_serve_takes_the_model_first_and_no_model_flag(case: str) -> None:
    plan = plan_of(case)
    repo = fleet_from_plan(plan).checkpoint.repo
    script = render_engine_script(plan)
    words = shlex.split(script.split("exec ", 1)[1].replace("\\\n", " "))
    assert words[:3] == ["vllm", "serve", repo]
    assert "--model" not in words
    # compose `command` and Kubernetes `args` follow the image's `vllm serve` ENTRYPOINT
    assert engine_args(fleet_from_plan(plan))[0] == repo


@pytest.mark.parametrize(
    ("model", "parser"),
    [("deepseek-r1", True), ("deepseek-r1-distill-qwen-1.5b", True),
     ("deepseek-r1-distill-qwen-32b", True), ("deepseek-r1-distill-llama-70b", True),
     ("deepseek-r1:7b", True),  # an alias: the catalog id it names is an R1 distill
     ("llama-3.1-8b", False), ("qwen2.5-7b", False), ("qwen3-32b", False),
     ("deepseek-v3", False), ("deepseek-v3.1", False)],
)  # fmt: skip
def test_reasoning_parser_for_r1_models_only(model: str, parser: bool) -> None:
    args = vllm_args(fleet_from_plan(vllm_plan(model)))
    assert ("--reasoning-parser" in args) is parser
    if parser:
        assert flag(args, "--reasoning-parser") == "deepseek_r1"
    assert "--enable-reasoning" not in args  # removed from vLLM; the parser alone turns it on


def test_image_constants_are_pinned_releases() -> None:
    m = VLLM_TAG.fullmatch(VLLM_IMAGE)
    assert m, VLLM_IMAGE
    # the positional model needs an image whose ENTRYPOINT is `vllm serve` (v0.26 has it)
    assert tuple(map(int, m.groups())) >= (0, 26, 0)
    assert LLAMA_TAG.fullmatch(LLAMA_IMAGE), LLAMA_IMAGE


@pytest.mark.parametrize("case", CASES)
def test_rendered_engine_images_are_pinned(case: str) -> None:
    plan = plan_of(case)
    files = render_all(plan)
    images = {
        image
        for name in ("docker-compose.yml", "kubernetes.yaml")
        for image in ENGINE_IMAGE_LINE.findall(files[name])
    }
    assert images == {engine_image(fleet_from_plan(plan))}
    for image in images:
        assert not image.endswith((":latest", ":server-cuda")), image
        assert VLLM_TAG.fullmatch(image) or LLAMA_TAG.fullmatch(image), image


@pytest.mark.parametrize(
    ("prompt", "output", "parallel"),
    [(512, 256, 2),  # the golden plan: 768 a slot is a multiple of 256, so no slack at all today
     (64, 32, 8), (100, 28, 16), (1000, 24, 1), (2048, 2048, 4), (3000, 1000, 3)],
)  # fmt: skip
def test_every_slot_holds_prompt_output_and_the_template(
    prompt: int, output: int, parallel: int
) -> None:
    plan = llama_plan(prompt=prompt, output=output, parallel=parallel)
    args = llama_server_args(fleet_from_plan(plan))
    ctx, slots = int(flag(args, "-c")), int(flag(args, "-np"))
    assert slots == parallel and ctx % slots == 0
    per_slot = ctx // slots
    assert per_slot >= prompt + output + TEMPLATE_TOKENS
    # a multiple of 256, as llama.cpp pads a slot: the slot is exactly this, and at most 255
    # tokens above what it must hold (the memory the template allowance costs stays small)
    assert per_slot % 256 == 0 and per_slot - (prompt + output + TEMPLATE_TOKENS) < 256
    # Ollama's num_ctx is one request's context: the same as a slot's
    assert f"PARAMETER num_ctx {per_slot}\n" in render_modelfile(plan)


def test_a_planned_llama_fleet_leaves_room_for_the_template(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    assert main([*LLAMA_PLAN, "-o", str(path)]) == 0
    plan = planfile.load(path.read_text(encoding="utf-8"))
    s = plan["engine_settings"]
    args = llama_server_args(fleet_from_plan(plan))
    assert int(flag(args, "-c")) // s["parallel"] >= 64 + 32 + TEMPLATE_TOKENS


def test_the_real_llama_server_gives_each_slot_what_the_line_says(
    tiny_model: Path, tmp_path: Path
) -> None:
    plan = plan_of("llamacpp-moe-offload")
    fleet = fleet_from_plan(plan)
    port = free_ports(1)
    args = llama_server_args(fleet, model_path=str(tiny_model), port=port)
    args[args.index("--host") + 1] = "127.0.0.1"
    argv = [str(binary()), *args, "-t", "1", "-tb", "1", "--no-webui"]
    with (
        llama_servers([argv], logs=tmp_path) as (server,),
        urllib.request.urlopen(server.url + "/slots", timeout=5) as r,
    ):
        slots = json.load(r)
    assert [s["n_ctx"] for s in slots] == [slot_context(fleet)] * len(slots)
    assert len(slots) == fleet.settings["parallel"]
