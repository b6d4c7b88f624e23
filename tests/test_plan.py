"""Whole plans: fit, speed, fleet arithmetic, bad input, catalog look-ups, the --json contract."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest

from gateway.planner.capacity import Workload
from gateway.planner.catalog import Catalog, load_catalog, model_from_hf_config
from gateway.planner.errors import PlanError
from gateway.planner.plan import Plan, PlanRequest, make_plan, request_for
from gateway.planner.report import plan_dict
from gateway.planner.tensors import param_count
from tests.hf_configs import QWEN2_7B_CONFIG

JSON_KEYS = [
    "memory.weights_gib",
    "memory.kv_bytes_per_token",
    "memory.gpu_gib",
    "memory.cpu_ram_gib",
    "fit.kind",
    "fit.tensor_parallel",
    "fit.gpu_layers",
    "fit.n_cpu_moe",
    "speed.decode_tokens_per_s_batch1",
    "speed.prefill_tokens_per_s",
    "replica.gpus",
    "replica.max_batch",
    "replica.capacity_qps",
    "fleet.replicas",
    "fleet.gpus",
    "cost.monthly_usd",
    "cost.usd_per_million_output_tokens",
]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def request(
    catalog: Catalog,
    model: str,
    quant: str,
    gpu: str,
    engine: str = "vllm",
    *,
    prompt_tokens: int = 512,
    output_tokens: int = 256,
    target_qps: float = 1.0,
    ttft_slo_s: float = 2.0,
    tpot_slo_s: float = 0.05,
    headroom: float = 0.2,
    **knobs: Any,
) -> PlanRequest:
    wl = Workload(
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        target_qps=target_qps,
        ttft_slo_s=ttft_slo_s,
        tpot_slo_s=tpot_slo_s,
        headroom=headroom,
    )
    return request_for(
        catalog, model=model, quant=quant, gpu=gpu, engine=engine, workload=wl, **knobs
    )


def plan(catalog: Catalog, *args: Any, **kwargs: Any) -> Plan:
    return make_plan(request(catalog, *args, **kwargs), catalog)


# --- fit ----------------------------------------------------------------------------------------


def test_deepseek_v3_1_q8_0_on_one_l4_offloads_experts(catalog: Catalog) -> None:
    p = plan(catalog, "deepseek-v3.1", "q8_0", "l4", "llama.cpp", target_qps=0.1)
    decode = plan_dict(p)["speed"]["decode_tokens_per_s_batch1"]
    assert p.fit.kind == "moe_offload"
    assert p.fit.n_cpu_moe is not None and p.fit.n_cpu_moe > 0
    assert p.fit.gpu_layers is not None and p.fit.gpu_layers > p.request.model.num_layers
    assert p.fit.cpu_ram_gib > 600
    assert 0 < decode < 24


@pytest.mark.parametrize(
    ("model", "quant", "gpu", "engine"),
    [
        ("deepseek-v3.1", "q8_0", "l4", "llama.cpp"),
        ("deepseek-r1", "q4_k_m", "rtx-4090", "llama.cpp"),
        ("llama-3.1-70b", "q4_k_m", "rtx-3090", "llama.cpp"),
        ("llama-3.1-8b", "q4_k_m", "rtx-4090", "llama.cpp"),
        ("llama-3.1-8b", "fp16", "a100-80gb-sxm", "vllm"),
        ("llama-3.1-70b", "fp8", "h100-sxm", "vllm"),
        ("deepseek-v3", "fp8", "h200", "vllm"),
    ],
)
def test_gpu_memory_per_gpu_within_the_card(
    catalog: Catalog, model: str, quant: str, gpu: str, engine: str
) -> None:
    p = plan(catalog, model, quant, gpu, engine)
    memory = plan_dict(p)["memory"]
    assert p.fit.ok
    assert memory["gpu_total_gib"] == catalog.gpu(gpu).memory_gib
    assert 0 < memory["gpu_gib"] <= memory["gpu_total_gib"]
    assert p.fit.kv_tokens >= p.request.workload.context


def test_model_that_cannot_fit_says_why_and_what_would(catalog: Catalog) -> None:
    p = plan(catalog, "deepseek-v3", "fp16", "rtx-3060-12gb", "vllm", max_gpus_per_replica=1)
    assert p.fit.kind == "none"
    assert p.fit.reason
    assert p.fit.nearest != []


def test_nearest_fits_are_offered_for_a_dense_model(catalog: Catalog) -> None:
    p = plan(catalog, "llama-3.1-70b", "fp16", "rtx-4090", "vllm", max_gpus_per_replica=1)
    assert p.fit.kind == "none"
    assert p.fit.nearest != []
    assert plan_dict(p)["fleet"]["gpus"] == 0


# --- the --json contract ------------------------------------------------------------------------


def missing_keys(d: dict[str, Any]) -> list[str]:
    missing = []
    for key in JSON_KEYS:
        node: Any = d
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    return missing


@pytest.mark.parametrize(
    ("model", "quant", "gpu", "engine", "knobs"),
    [
        ("deepseek-v3.1", "q8_0", "l4", "llama.cpp", {}),  # moe_offload
        ("llama-3.1-70b", "fp8", "h100-sxm", "vllm", {}),  # tensor parallel
        ("llama-3.1-8b", "q4_k_m", "rtx-3060-12gb", "llama.cpp", {}),  # no GPU price
        ("deepseek-v3", "fp16", "rtx-3060-12gb", "vllm", {"max_gpus_per_replica": 1}),  # none
    ],
)
def test_plan_dict_has_every_json_key(
    catalog: Catalog, model: str, quant: str, gpu: str, engine: str, knobs: dict[str, Any]
) -> None:
    d = plan_dict(plan(catalog, model, quant, gpu, engine, target_qps=0.1, **knobs))
    assert missing_keys(d) == []


def test_plan_dict_values_for_a_vllm_plan(catalog: Catalog) -> None:
    d = plan_dict(
        plan(catalog, "deepseek-r1-distill-qwen-32b", "awq", "a100-80gb-sxm", target_qps=75)
    )
    assert d["fit"]["kind"] == ("gpu" if d["fit"]["gpus"] == 1 else "tensor_parallel")
    assert d["memory"]["kv_bytes_per_token"] == 256 * 1024
    assert isinstance(d["fleet"]["gpus"], int) and d["fleet"]["gpus"] >= 1
    assert d["fleet"]["gpus"] == d["fleet"]["replicas"] * d["replica"]["gpus"]
    assert d["cost"]["monthly_usd"] > 0


# --- fleet arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize(("headroom", "gpus"), [(0.0, 8), (0.2, 9)])
def test_per_card_qps_seed_arithmetic(catalog: Catalog, headroom: float, gpus: int) -> None:
    # 75 QPS at 10 QPS per card: ceil(75 / 10) = 8 cards; with 20 % headroom ceil(90 / 10) = 9
    p = plan(
        catalog,
        "deepseek-r1-distill-qwen-7b",
        "awq",
        "a100-80gb-sxm",
        target_qps=75,
        headroom=headroom,
        per_card_qps=10,
    )
    assert p.fit.gpus == 1
    assert plan_dict(p)["fleet"]["gpus"] == gpus


FLEETS = [
    ("llama-3.1-8b", "fp16", "a100-80gb-sxm", "vllm", 10, 0.2),
    ("deepseek-r1-distill-qwen-32b", "awq", "a100-80gb-sxm", "vllm", 75, 0.2),
    ("qwen2.5-7b", "fp8", "h100-sxm", "vllm", 30, 0.5),
    ("llama-3.1-8b", "q4_k_m", "rtx-4090", "llama.cpp", 8, 0.2),
    ("deepseek-v3", "fp8", "h200", "vllm", 10, 0.3),
    ("llama-3.1-70b", "awq", "l40s", "vllm", 4, 0.0),
]


@pytest.mark.parametrize(("model", "quant", "gpu", "engine", "target", "headroom"), FLEETS)
def test_replicas_follow_the_headroom_formula(
    catalog: Catalog, model: str, quant: str, gpu: str, engine: str, target: float, headroom: float
) -> None:
    p = plan(catalog, model, quant, gpu, engine, target_qps=target, headroom=headroom)
    assert p.replica is not None
    formula = math.ceil(round(target * (1 + headroom) / p.replica.capacity_qps, 9))
    if p.limited_by == "headroom":
        assert p.replicas == formula
    else:  # the TTFT SLO can only ask for more replicas than headroom alone
        assert p.limited_by == "ttft_slo"
        assert p.replicas >= formula


@pytest.mark.parametrize(("model", "quant", "gpu", "engine", "target", "headroom"), FLEETS)
def test_doubling_target_never_shrinks_the_fleet(
    catalog: Catalog, model: str, quant: str, gpu: str, engine: str, target: float, headroom: float
) -> None:
    # replicas may fall when a bigger replica (more TP) becomes cheaper; the GPU count may not
    gpus = [
        plan(catalog, model, quant, gpu, engine, target_qps=target * k, headroom=headroom).gpus
        for k in (1, 2, 4, 8)
    ]
    assert gpus == sorted(gpus)
    assert gpus[-1] > gpus[0]


@pytest.mark.parametrize(("model", "quant", "gpu", "engine", "target", "headroom"), FLEETS)
def test_doubling_target_never_reduces_replicas_of_one_size(
    catalog: Catalog, model: str, quant: str, gpu: str, engine: str, target: float, headroom: float
) -> None:
    size = plan(catalog, model, quant, gpu, engine, target_qps=target, headroom=headroom).fit.gpus
    counts = [
        plan(
            catalog,
            model,
            quant,
            gpu,
            engine,
            target_qps=target * k,
            headroom=headroom,
            gpus_per_replica=size,
        ).replicas
        for k in (1, 2, 4, 8)
    ]
    assert counts == sorted(counts)
    assert counts[-1] > counts[0]


@pytest.mark.parametrize(
    ("model", "quant", "engine", "gpus_per_replica"),
    [
        ("llama-3.1-8b", "fp16", "vllm", 1),
        ("deepseek-r1-distill-qwen-32b", "awq", "vllm", 1),
        ("qwen2.5-7b", "fp8", "vllm", 1),
        ("llama-3.1-70b", "fp8", "vllm", 1),
        ("llama-3.1-70b", "fp8", "vllm", 2),
        ("deepseek-v3", "fp8", "vllm", 16),
        ("llama-3.1-8b", "q4_k_m", "llama.cpp", 1),
        ("qwen2.5-14b", "q8_0", "llama.cpp", 1),
    ],
)
def test_more_bandwidth_never_lowers_capacity(
    catalog: Catalog, model: str, quant: str, engine: str, gpus_per_replica: int
) -> None:
    a100, h100 = (
        plan(catalog, model, quant, gpu, engine, gpus_per_replica=gpus_per_replica)
        for gpu in ("a100-80gb-sxm", "h100-sxm")
    )
    assert a100.replica is not None and h100.replica is not None
    assert h100.replica.capacity_qps >= a100.replica.capacity_qps


@pytest.mark.parametrize(
    ("model", "quant", "engine"),
    [
        ("llama-3.1-8b", "fp16", "vllm"),
        ("llama-3.1-70b", "fp8", "vllm"),
        ("deepseek-v3", "fp8", "vllm"),
        ("qwen2.5-14b", "q8_0", "llama.cpp"),
    ],
)
@pytest.mark.parametrize("target", [1, 20])
def test_more_bandwidth_never_needs_more_gpus(
    catalog: Catalog, model: str, quant: str, engine: str, target: float
) -> None:
    a100, h100 = (
        plan(catalog, model, quant, gpu, engine, target_qps=target)
        for gpu in ("a100-80gb-sxm", "h100-sxm")
    )
    assert h100.gpus <= a100.gpus


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "quant", "engine", "workload", "field"),
    [
        ("llama-3.1-8b", "fp16", "vllm", {"prompt_tokens": 0}, "prompt_tokens"),
        ("llama-3.1-8b", "fp16", "vllm", {"output_tokens": 0}, "output_tokens"),
        ("llama-3.1-8b", "fp16", "vllm", {"target_qps": -1}, "target_qps"),
        ("llama-3.1-8b", "fp16", "vllm", {"ttft_slo_s": 0}, "ttft_slo"),
        ("llama-3.1-8b", "fp16", "vllm", {"tpot_slo_s": math.inf}, "tpot_slo"),
        ("llama-3.1-8b", "fp16", "vllm", {"headroom": -0.1}, "headroom"),
        ("llama-3.1-8b", "q4_k_m", "vllm", {}, "quant"),
        ("llama-3.1-8b", "awq", "llama.cpp", {}, "quant"),
        (
            "llama-3-8b",
            "fp16",
            "vllm",
            {"prompt_tokens": 8000, "output_tokens": 500},
            "prompt_tokens",
        ),
    ],
)
def test_bad_input_names_its_field(
    catalog: Catalog, model: str, quant: str, engine: str, workload: dict[str, Any], field: str
) -> None:
    with pytest.raises(PlanError) as e:
        plan(catalog, model, quant, "a100-80gb-sxm", engine, **workload)
    assert e.value.field == field


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("per_card_qps", 0),
        ("gpu_price_usd_per_hour", -1.0),
        ("gpus_per_replica", 0),
        ("max_batch", 0),
        ("kv_dtype", "int3"),
    ],
)
def test_bad_knob_names_its_field(catalog: Catalog, knob: str, value: Any) -> None:
    with pytest.raises(PlanError) as e:
        plan(catalog, "llama-3.1-8b", "fp16", "a100-80gb-sxm", **{knob: value})
    assert e.value.field == {"gpu_price_usd_per_hour": "gpu_price"}.get(knob, knob)


# --- catalog ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "spelling", "key"),
    [
        ("gpu", "A100-80G", "a100-80gb-sxm"),
        ("gpu", "4090", "rtx-4090"),
        ("quant", "Q4_K_M", "q4_k_m"),
        ("model", "deepseek-r1:7b", "deepseek-r1-distill-qwen-7b"),
        ("engine", "llama.cpp", "llama.cpp"),
    ],
)
def test_catalog_alias(catalog: Catalog, kind: str, spelling: str, key: str) -> None:
    assert getattr(catalog, kind)(spelling).id == key


def test_unknown_gpu_lists_close_matches(catalog: Catalog) -> None:
    with pytest.raises(PlanError) as e:
        catalog.gpu("a100-90g")
    assert e.value.field == "gpu"
    assert "a100-80gb-sxm" in str(e.value)


def test_model_from_hf_config_matches_catalog(catalog: Catalog) -> None:
    model = model_from_hf_config(QWEN2_7B_CONFIG, id="qwen2-7b")
    assert param_count(model) == param_count(catalog.model("qwen2.5-7b")) == 7_615_616_512


def test_model_from_hf_config_without_hidden_size() -> None:
    cfg = {k: v for k, v in QWEN2_7B_CONFIG.items() if k != "hidden_size"}
    with pytest.raises(PlanError) as e:
        model_from_hf_config(cfg, id="broken")
    assert "hidden_size" in e.value.field


# --- hosted API comparison ----------------------------------------------------------------------

HOSTED_SCRIPT = """
import sys
from gateway.planner.capacity import Workload
from gateway.planner.catalog import load_catalog
from gateway.planner.plan import PlanRequest, make_plan
from gateway.planner.report import plan_dict

c = load_catalog()
wl = Workload(prompt_tokens=512, output_tokens=256, target_qps=1, ttft_slo_s=2, tpot_slo_s=0.05)
req = PlanRequest(model=c.model("deepseek-v3"), quant=c.quant("fp8"), gpu=c.gpu("h200"),
                  engine=c.engine("vllm"), workload=wl)
api = plan_dict(make_plan(req, c))["hosted_api"]
assert api is not None, "no hosted_api comparison"
assert api["monthly_usd"] > 0, api
assert "litellm" not in sys.modules, "planning imported litellm"
print("ok")
"""


def test_hosted_api_comparison_without_importing_litellm() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HOSTED_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
