"""The engine's knobs on `cardinal plan`: max_num_seqs, max_num_batched_tokens,
gpu_memory_utilization, the KV cache type, -ngl and a forced TP degree, from the flags through the
plan, the report, the plan file and the rendered command lines."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import planfile
from gateway.planner.capacity import Workload
from gateway.planner.catalog import load_catalog
from gateway.planner.fit import GIB, fit_options, tp_degrees, tp_problem
from gateway.planner.plan import fit_input, make_plan, request_for
from gateway.planner.report import PLAN_VERSION, plan_dict
from gateway.planner.weights import weights
from gateway.render.engine import llama_server_args, vllm_args
from gateway.render.fleet import fleet_from_plan
from tests.test_cli import cardinal

WORKLOAD = ["--target-qps", "2", "--prompt-tokens", "512", "--output-tokens", "256"]
VLLM_7B = ["plan", "--model", "qwen2.5-7b", "--quant", "awq", "--gpu", "l4", *WORKLOAD]
LLAMA_7B = ["plan", "--model", "qwen2.5-7b", "--quant", "q4_k_m", "--gpu", "l4", *WORKLOAD]
LLAMA_32B_OFFLOAD = [
    "plan", "--model", "qwen2.5-32b", "--quant", "q8_0", "--gpu", "l4", *WORKLOAD,
    "--tpot-slo", "1s", "--ttft-slo", "60s",
]  # fmt: skip
# docs.vllm.ai engine arguments: --max-num-batched-tokens joins the flags test_render checks
VLLM_FLAGS = {
    "--model", "--served-model-name", "--host", "--port", "--tensor-parallel-size",
    "--pipeline-parallel-size", "--max-num-seqs", "--max-model-len", "--gpu-memory-utilization",
    "--kv-cache-dtype", "--quantization", "--max-num-batched-tokens",
}  # fmt: skip


def plan_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = cardinal([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def flag_values(args: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(args, [*args[1:], ""], strict=True) if a.startswith("-")}


def test_vllm_knobs_reach_the_plan_json_and_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    knobs = ["--kv-dtype", "fp8", "--max-num-seqs", "32", "--max-num-batched-tokens", "4096"]
    d = plan_json([*VLLM_7B, *knobs, "--gpu-memory-utilization", "0.8"], capsys)
    i, s = d["inputs"], d["engine_settings"]
    assert (i["max_num_seqs"], i["max_num_batched_tokens"], i["gpu_memory_utilization"]) == (
        32,
        4096,
        0.8,
    )
    assert s["max_num_seqs"] <= 32
    assert (s["max_num_batched_tokens"], s["gpu_memory_utilization"]) == (4096, 0.8)
    args = vllm_args(fleet_from_plan(planfile.load(planfile.dump(d))))
    flags = flag_values(args)
    assert set(flags) <= VLLM_FLAGS
    assert flags["--max-num-seqs"] == str(s["max_num_seqs"])
    assert flags["--max-num-batched-tokens"] == "4096"
    assert flags["--gpu-memory-utilization"] == "0.8"
    assert flags["--kv-cache-dtype"] == "fp8"


def test_engine_defaults_are_explicit(capsys: pytest.CaptureFixture[str]) -> None:
    d = plan_json(VLLM_7B, capsys)
    i, s = d["inputs"], d["engine_settings"]
    assert [i[k] for k in ("max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization")] == [
        None,
        None,
        None,
    ]  # engines.yaml: vllm max_num_batched_tokens 8192, gpu_memory_utilization 0.9
    assert (s["max_num_batched_tokens"], s["gpu_memory_utilization"]) == (8192, 0.9)
    assert "--max-num-batched-tokens" in vllm_args(fleet_from_plan(d))


def test_max_batch_is_an_alias_of_max_num_seqs(capsys: pytest.CaptureFixture[str]) -> None:
    a = plan_json([*VLLM_7B, "--max-num-seqs", "8"], capsys)
    b = plan_json([*VLLM_7B, "--max-batch", "8"], capsys)
    assert a == b
    assert a["replica"]["max_batch"] == 8


@pytest.mark.parametrize(
    ("argv", "batch", "words"),
    [
        # a loose TPOT SLO on an H100: vLLM's own cap of 256 sequences is what stops the batch
        (
            ["--gpu", "h100-sxm", "--tpot-slo", "200ms"],
            256,
            "max_num_seqs (engine default 256)",
        ),
        (["--gpu", "h100-sxm", "--tpot-slo", "200ms", "--max-num-seqs", "64"], 64, None),
        # each decode step schedules one token per running sequence: 16 tokens, 16 sequences
        (["--gpu", "h100-sxm", "--tpot-slo", "200ms", "--max-num-batched-tokens", "16"], 16, None),
        (["--tpot-slo", "50ms"], None, "the TPOT SLO (50 ms)"),
        # 32k-token requests on an L4: the KV cache holds only a few of them
        (
            ["--tpot-slo", "1s", "--prompt-tokens", "30000", "--ttft-slo", "60s"],
            None,
            "KV memory",
        ),
    ],
)
def test_report_says_what_set_the_batch(
    argv: list[str], batch: int | None, words: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [a for a in VLLM_7B]
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        if flag in base:
            base[base.index(flag) + 1] = value
        else:
            base += [flag, value]
    d = plan_json(base, capsys)
    r = d["replica"]
    if batch is not None:
        assert r["max_batch"] == batch
    if words is None:  # set by the flag: the report names it
        flag = next(f for f in argv if f.startswith("--max-num"))
        words = f"{flag[2:].replace('-', '_')} {batch} ({flag})"
    assert r["batch_limited_by"].startswith(words)
    code, out, _ = cardinal(base, capsys)
    assert f"max batch          {r['max_batch']}, limited by {words}" in out


def test_gpu_memory_utilization_sets_the_kv_budget() -> None:
    c = load_catalog()
    wl = Workload(prompt_tokens=512, output_tokens=256, target_qps=1, ttft_slo_s=2, tpot_slo_s=1)
    budgets = []
    for share in (0.9, 0.5):
        req = request_for(
            c, model="qwen2.5-7b", quant="awq", gpu="l4", workload=wl, gpu_memory_utilization=share
        )
        fit = fit_options(fit_input(req, weights(req.model, req.quant, c)))[0]
        budgets.append(fit.kv_budget_bytes_per_gpu)
    # vLLM: the KV cache gets utilization x memory, less weights and the profiled peak
    assert budgets[0] - budgets[1] == pytest.approx(0.4 * c.gpu("l4").memory_gib * GIB)


def test_max_num_batched_tokens_reaches_the_speed_model() -> None:
    c = load_catalog()
    wl = Workload(prompt_tokens=8000, output_tokens=64, target_qps=1, ttft_slo_s=60, tpot_slo_s=1)

    def plan(tokens: int | None) -> Any:
        req = request_for(
            c, model="qwen2.5-7b", quant="awq", gpu="l4", workload=wl, max_num_batched_tokens=tokens
        )
        return make_plan(req, c)

    default, small = plan(None), plan(512)
    assert default.speed.max_num_batched_tokens is None
    assert small.speed.max_num_batched_tokens == 512
    # 16 chunks of 512 read the weights 16 times where one 8192-token chunk reads them once
    assert small.speed.prefill_s(8000) >= default.speed.prefill_s(8000)
    assert small.fit.kv_tokens > default.fit.kv_tokens  # a smaller profiled activation peak


def test_llama_server_line_carries_kv_type_and_forced_layers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [*LLAMA_32B_OFFLOAD, "--kv-dtype", "q8_0", "--gpu-layers", "20"]
    d = plan_json(argv, capsys)
    assert d["inputs"]["gpu_layers"] == 20
    assert (d["fit"]["kind"], d["fit"]["gpu_layers"]) == ("partial_offload", 20)
    flags = flag_values(llama_server_args(fleet_from_plan(d)))
    assert (flags["-ngl"], flags["-ctk"], flags["-ctv"], flags["-fa"]) == (
        "20",
        "q8_0",
        "q8_0",
        "on",
    )
    code, out, _ = cardinal(argv, capsys)
    assert "-ngl 20 (the last 20 layers on the GPU as --gpu-layers asks" in out
    assert "cache_type q8_0" in out


def test_fp8_kv_halves_the_vllm_cache(capsys: pytest.CaptureFixture[str]) -> None:
    auto = plan_json(VLLM_7B, capsys)["memory"]["kv_bytes_per_token"]
    fp8 = plan_json([*VLLM_7B, "--kv-dtype", "fp8"], capsys)["memory"]["kv_bytes_per_token"]
    assert fp8 == auto / 2


@pytest.mark.parametrize(
    ("argv", "flag", "mention"),
    [
        ([*LLAMA_7B, "--kv-dtype", "fp8"], "--kv-dtype", "q8_0"),
        ([*VLLM_7B, "--kv-dtype", "q8_0"], "--kv-dtype", "fp8"),
        ([*VLLM_7B, "--kv-dtype", "q4_0"], "--kv-dtype", "not 'q4_0'"),
        ([*VLLM_7B, "--gpu-layers", "10"], "--gpu-layers", "-ngl"),
        ([*LLAMA_7B, "--gpu-layers", "0"], "--gpu-layers", "> 0"),
        ([*LLAMA_7B, "--gpu-memory-utilization", "0.8"], "--gpu-memory-utilization", "vLLM"),
        ([*LLAMA_7B, "--max-num-batched-tokens", "2048"], "--max-num-batched-tokens", "vLLM"),
        ([*VLLM_7B, "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization", "(0, 1]"),
        ([*VLLM_7B, "--gpu-memory-utilization", "0"], "--gpu-memory-utilization", "(0, 1]"),
        ([*VLLM_7B, "--gpu-memory-utilization", "most"], "--gpu-memory-utilization", "most"),
        ([*VLLM_7B, "--max-num-seqs", "0"], "--max-num-seqs", "> 0"),
        ([*VLLM_7B, "--max-batch", "-4"], "--max-batch", "> 0"),
        ([*VLLM_7B, "--max-num-batched-tokens", "lots"], "--max-num-batched-tokens", "lots"),
        # Qwen2.5-7B: 28 attention heads, 4 KV heads; vLLM: "Total number of attention heads
        # (28) must be divisible by tensor parallel size (8)"
        (
            [
                "plan",
                "--model",
                "qwen2.5-7b",
                "--quant",
                "fp16",
                "--gpu",
                "h100-sxm",
                *WORKLOAD,
                "--gpus-per-replica",
                "8",
            ],
            "--gpus-per-replica",
            "1, 2, 4",
        ),  # fmt: skip
        (
            ["plan", "--search", "--model", "qwen2.5-7b", *WORKLOAD, "--kv-dtype", "fp8"],
            "--kv-dtype",
            "--engines vllm",
        ),
        (
            ["plan", "--search", "--model", "qwen2.5-7b", *WORKLOAD, "--kv-dtype", "q4_0"],
            "--kv-dtype",
            "--engines llama.cpp",
        ),
        (
            ["plan", "--search", "--model", "qwen2.5-7b", *WORKLOAD, "--gpu-layers", "3"],
            "--gpu-layers",
            "not a search",
        ),
    ],
)
def test_a_bad_knob_is_one_line_naming_the_flag(
    argv: list[str], flag: str, mention: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cardinal(argv, capsys)
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and mention in lines[0], lines[0]


@pytest.mark.parametrize(
    ("model", "degrees"),
    [
        # (attention heads, KV heads) from each model's config.json; vLLM needs heads % tp == 0
        # and KV heads % tp == 0, or tp % KV heads == 0 where it replicates them
        ("qwen2.5-7b", [1, 2, 4]),  # 28, 4
        ("deepseek-r1-distill-qwen-1.5b", [1, 2, 4, 6]),  # 12, 2
        ("qwen2.5-32b", [1, 2, 4, 8, 16]),  # 40, 8: TP 5 divides the heads, not the KV heads
        ("llama-3.1-70b", [1, 2, 4, 8, 16]),  # 64, 8
    ],
)
def test_tp_degrees_vllm_accepts(model: str, degrees: list[int]) -> None:
    c = load_catalog()
    m = c.model(model)
    assert tp_degrees(m, c.engine("vllm")) == degrees
    assert all(tp_problem(m, n) for n in range(1, 9) if n not in degrees)


def test_forced_tp_vllm_accepts_plans(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "qwen2.5-7b", "--quant", "fp16", "--gpu", "h100-sxm", *WORKLOAD]
    d = plan_json([*argv, "--gpus-per-replica", "4"], capsys)
    assert (d["fit"]["tensor_parallel"], d["inputs"]["gpus_per_replica"]) == (4, 4)


def test_search_carries_the_knobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cheapest.yaml"
    argv = ["plan", "--search", "--model", "qwen2.5-7b", *WORKLOAD, "--engines", "vllm"]
    knobs = ["--max-num-seqs", "4", "--kv-dtype", "fp8", "--max-num-batched-tokens", "2048"]
    code, out, err = cardinal([*argv, *knobs, "-o", str(path)], capsys)
    assert code == 0, err
    plan = planfile.load(path.read_text(encoding="utf-8"))
    assert plan["inputs"]["max_num_seqs"] == 4
    s = plan["engine_settings"]
    assert s["max_num_seqs"] <= 4
    assert (s["kv_cache_dtype"], s["max_num_batched_tokens"]) == ("fp8", 2048)


# --- the plan file ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def knob_plan() -> dict[str, Any]:
    c = load_catalog()
    wl = Workload(prompt_tokens=512, output_tokens=256, target_qps=2, ttft_slo_s=2, tpot_slo_s=0.05)
    req = request_for(
        c,
        model="qwen2.5-7b",
        quant="awq",
        gpu="l4",
        workload=wl,
        max_num_seqs=32,
        max_num_batched_tokens=4096,
        gpu_memory_utilization=0.8,
    )
    return plan_dict(make_plan(req, c))


def test_plan_file_round_trips_the_knobs(knob_plan: dict[str, Any]) -> None:
    assert knob_plan["version"] == PLAN_VERSION == planfile.VERSION
    loaded = planfile.load(planfile.dump(knob_plan))
    assert loaded["inputs"]["max_num_batched_tokens"] == 4096
    assert loaded["engine_settings"]["gpu_memory_utilization"] == 0.8


def test_plan_file_without_the_knobs_still_loads(knob_plan: dict[str, Any]) -> None:
    old = copy.deepcopy(knob_plan)
    for key in ("gpus_per_replica", "max_num_seqs", "max_num_batched_tokens"):
        del old["inputs"][key]
    for key in ("gpu_memory_utilization", "gpu_layers"):
        del old["inputs"][key]
    del old["engine_settings"]["max_num_batched_tokens"]
    del old["replica"]["batch_limited_by"]
    loaded = planfile.load(planfile.dump(old))
    assert "--max-num-batched-tokens" not in vllm_args(fleet_from_plan(loaded))  # vLLM's default


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("inputs.max_num_seqs", 0),
        ("inputs.max_num_seqs", "32"),
        ("inputs.max_num_batched_tokens", -1),
        ("inputs.gpu_memory_utilization", 1.5),
        ("inputs.gpu_memory_utilization", 0),
        ("inputs.gpu_layers", True),
        ("inputs.gpus_per_replica", 2.5),
        ("engine_settings.max_num_batched_tokens", None),
        ("engine_settings.gpu_memory_utilization", "0.9"),
        ("replica.batch_limited_by", 3),
    ],
)
def test_bad_knob_in_the_plan_file_names_the_field(
    knob_plan: dict[str, Any], dotted: str, value: Any
) -> None:
    data = copy.deepcopy(knob_plan)
    section, key = dotted.split(".")
    data[section][key] = value
    with pytest.raises(planfile.PlanFileError) as e:
        planfile.load(yaml.safe_dump(data))
    assert e.value.field == dotted
    assert f"`{dotted}`" in str(e.value)


def test_readme_plan_options_are_real_flags() -> None:
    from gateway.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("Common options:", 1)[1].split("\n\n", 2)[1]
    flags = {row.split("`")[1].split()[0] for row in table.splitlines() if row.startswith("| `")}
    plan = build_parser()._subparsers._group_actions[0].choices["plan"]  # type: ignore[union-attr]
    known = {s for a in plan._actions for s in a.option_strings}
    assert {"--max-num-seqs", "--max-num-batched-tokens", "--gpu-memory-utilization"} <= flags
    assert flags <= known, flags - known
