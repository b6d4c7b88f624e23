"""The plan file: written by `cardinal plan -o`, validated on load with errors naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from gateway import planfile
from gateway.planfile import PlanFileError
from gateway.planner.capacity import Workload
from gateway.planner.catalog import load_catalog
from gateway.planner.plan import make_plan, request_for
from gateway.planner.report import plan_dict


def _plan_dict(model: str, quant: str, gpu: str, engine: str, **knobs: Any) -> dict[str, Any]:
    c = load_catalog()
    wl = Workload(
        prompt_tokens=512, output_tokens=256, target_qps=10, ttft_slo_s=2, tpot_slo_s=0.05
    )
    req = request_for(c, model=model, quant=quant, gpu=gpu, engine=engine, workload=wl, **knobs)
    return plan_dict(make_plan(req, c))


@pytest.fixture(scope="module")
def valid() -> dict[str, Any]:
    return _plan_dict("deepseek-r1-distill-qwen-32b", "awq", "a100-80gb-sxm", "vllm")


def with_value(plan: dict[str, Any], dotted: str, value: Any) -> str:
    """The plan file text with one dotted key set (or removed, for `...`)."""
    data = copy.deepcopy(plan)
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return planfile.dump(data)


@pytest.mark.parametrize(
    ("model", "quant", "gpu", "engine", "knobs"),
    [
        ("deepseek-r1-distill-qwen-32b", "awq", "a100-80gb-sxm", "vllm", {}),
        ("deepseek-v3.1", "q8_0", "l4", "llama.cpp", {}),
        ("llama-3.1-8b", "q4_k_m", "rtx-3060-12gb", "llama.cpp", {}),  # no GPU price
        ("deepseek-v3", "fp16", "rtx-3060-12gb", "vllm", {"max_gpus_per_replica": 1}),  # no fit
    ],
)
def test_plan_round_trips(
    model: str, quant: str, gpu: str, engine: str, knobs: dict[str, Any]
) -> None:
    plan = _plan_dict(model, quant, gpu, engine, **knobs)
    assert planfile.load(planfile.dump(plan)) == plan


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("version", 2),
        ("version", ...),
        ("version", "1"),
        ("inputs.workload.target_qps", ...),
        ("inputs.workload.target_qps", "10"),
        ("inputs.workload.prompt_tokens", "512"),
        ("inputs.workload.prompt_tokens", 512.5),
        ("inputs.workload.prompt_tokens", -512),
        ("inputs.workload.output_tokens", 0),
        ("inputs.workload.ttft_slo_s", True),
        ("inputs.model", 7),
        ("fleet.gpus", None),
        ("fit.kind", "banana"),
        # hand edits that render and show took before (issue 20)
        ("engine_settings.max_num_seqs", -28),
        ("engine_settings.max_num_seqs", ...),
        ("engine_settings.tensor_parallel_size", 0),
        ("engine_settings.max_model_len", 4096.5),
        ("engine_settings.gpu_memory_utilization", 1.5),
        ("engine_settings.kv_cache_dtype", "q4_0"),  # llama.cpp's, not vLLM's
        ("engine_settings.max_num_batched_tokens", -1),
        ("inputs.gpu", "l44"),
        ("inputs.quant", "awq5"),
        ("inputs.engine", "tgi"),
        ("inputs.workload.headroom", -0.1),
        ("replica.max_batch", 0),
        ("cost.monthly_usd", -5),
    ],
)
def test_bad_field_is_named(valid: dict[str, Any], dotted: str, value: Any) -> None:
    with pytest.raises(PlanFileError) as e:
        planfile.load(with_value(valid, dotted, value))
    assert e.value.field == dotted
    assert dotted in str(e.value)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("engine_settings.parallel", -4),
        ("engine_settings.ctx_size", 0),
        ("engine_settings.gpu_layers", -1),
        ("engine_settings.n_cpu_moe", "all"),
        ("engine_settings.flash_attn", "yes"),
        ("engine_settings.cache_type", "fp8"),  # vLLM's, not llama.cpp's
    ],
)
def test_bad_llama_cpp_setting_is_named(dotted: str, value: Any) -> None:
    plan = _plan_dict("llama-3.1-8b", "q4_k_m", "rtx-3060-12gb", "llama.cpp")
    with pytest.raises(PlanFileError) as e:
        planfile.load(with_value(plan, dotted, value))
    assert e.value.field == dotted
    assert dotted in str(e.value)


def test_an_unknown_gpu_names_the_closest() -> None:
    plan = _plan_dict("deepseek-r1-distill-qwen-32b", "awq", "a100-80gb-sxm", "vllm")
    with pytest.raises(PlanFileError, match="closest matches: l40s|closest matches: l4"):
        planfile.load(with_value(plan, "inputs.gpu", "l44"))


def test_missing_section_names_the_first_key_in_it(valid: dict[str, Any]) -> None:
    with pytest.raises(PlanFileError) as e:
        planfile.load(with_value(valid, "inputs.workload", ...))
    assert e.value.field.startswith("inputs.workload.")


@pytest.mark.parametrize("text", ["", "- 1\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_yaml(text: str) -> None:
    with pytest.raises(PlanFileError) as e:
        planfile.load(text)
    assert "mapping" in str(e.value)


def test_dump_is_yaml_with_a_comment_header(valid: dict[str, Any]) -> None:
    text = planfile.dump(valid)
    assert text.startswith("#")
    assert yaml.safe_load(text) == valid


@pytest.mark.parametrize(
    ("settings", "max_batch", "want"),
    [
        ({"max_num_seqs": 96, "parallel": 4}, 128, 96),  # vLLM's max_num_seqs first
        ({"parallel": 4}, 128, 4),  # then llama.cpp's -np
        ({}, 128, 128),  # then the planner's max batch
        ({}, None, None),
    ],
)
def test_one_rule_for_a_replicas_concurrency(
    valid: dict, settings: dict, max_batch: int | None, want: int | None
) -> None:
    data = copy.deepcopy(valid)
    data["engine_settings"], data["replica"]["max_batch"] = settings, max_batch
    # the rule alone (validation requires the engine's own setting of a plan that fits)
    assert planfile.PlanFile.from_mapping(data).replica_concurrency == want
