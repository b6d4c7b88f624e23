"""Weight bytes, parameter counts and KV-cache bytes against sourced figures (formulas.md §1-2)."""

from __future__ import annotations

import pytest

from gateway.planner.catalog import Catalog, load_catalog
from gateway.planner.errors import PlanError
from gateway.planner.kvcache import kv_bytes_per_token, kv_bytes_per_token_per_gpu
from gateway.planner.tensors import param_count
from gateway.planner.weights import weights

GIB = 2**30
KIB = 1024


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


# Llama-3.1-8B whole-file bits per weight, llama.cpp tools/quantize/README.md
@pytest.mark.parametrize(
    ("quant", "bpw"),
    [
        ("q4_k_m", 4.8944),
        ("q8_0", 8.5008),
        ("q5_k_m", 5.7036),
        ("q6_k", 6.5633),
        ("q3_k_s", 3.6429),
        ("iq2_xxs", 2.3824),
        ("q4_k_s", 4.6672),
        ("q5_k_s", 5.5704),
        ("q2_k", 3.1593),
        ("iq4_xs", 4.4597),
        ("iq1_s", 2.0042),
        ("f16-gguf", 16.0005),
    ],
)
def test_llama_3_1_8b_gguf_bits_per_weight(catalog: Catalog, quant: str, bpw: float) -> None:
    w = weights(catalog.model("llama-3.1-8b"), catalog.quant(quant), catalog)
    assert w.bits_per_weight() == pytest.approx(bpw, rel=0.015)


def test_deepseek_r1_q4_k_m_file_size(catalog: Catalog) -> None:
    # unsloth/DeepSeek-R1-GGUF Q4_K_M: 376.65 GiB
    w = weights(catalog.model("deepseek-r1"), catalog.quant("q4_k_m"), catalog)
    assert w.total_bytes / GIB == pytest.approx(376.65, rel=0.01)


@pytest.mark.parametrize(
    ("model", "include_mtp", "params", "rel"),
    [
        ("deepseek-v3", False, 671.03e9, 0.001),  # llama.cpp prints 671.03 B
        ("deepseek-v3", True, 684.53e9, 0.005),  # the HF checkpoint, MTP layer included
        ("llama-3.1-8b", False, 8.03e9, 0.001),
        ("qwen2.5-7b", False, 7_615_616_512, 1e-9),  # exact, attention biases included
    ],
)
def test_param_count(
    catalog: Catalog, model: str, include_mtp: bool, params: float, rel: float
) -> None:
    assert param_count(catalog.model(model), include_mtp=include_mtp) == pytest.approx(
        params, rel=rel
    )


def test_weights_params_match_param_count(catalog: Catalog) -> None:
    model = catalog.model("deepseek-v3")
    assert weights(model, catalog.quant("q4_k_m"), catalog).params == param_count(model)


@pytest.mark.parametrize(
    ("model", "kib"),
    [
        ("deepseek-r1-distill-qwen-1.5b", 28),
        ("qwen2.5-7b", 56),
        ("llama-3.1-8b", 128),
        ("qwen2.5-14b", 192),
        ("qwen2.5-32b", 256),
        ("llama-3.1-70b", 320),
    ],
)
def test_gqa_kv_bytes_per_token(catalog: Catalog, model: str, kib: int) -> None:
    kv = kv_bytes_per_token(catalog.model(model), catalog.engine("vllm"), dtype_bytes=2)
    assert kv == kib * KIB


@pytest.mark.parametrize(
    ("engine", "layout", "nbytes"),
    [
        ("vllm", "latent", 70_272),
        ("llama.cpp", "latent", 70_272),
        ("llama.cpp", "latent-kv", 132_736),
        ("llama.cpp", "legacy", 4_997_120),
    ],
)
def test_deepseek_mla_kv_bytes_per_token(
    catalog: Catalog, engine: str, layout: str, nbytes: int
) -> None:
    kv = kv_bytes_per_token(
        catalog.model("deepseek-v3"), catalog.engine(engine), dtype_bytes=2, mla_layout=layout
    )
    assert kv == nbytes


@pytest.mark.parametrize(
    ("model", "tp", "divisor"),
    [
        ("qwen2.5-7b", 1, 1),
        ("qwen2.5-7b", 2, 2),
        ("qwen2.5-7b", 4, 4),
        ("qwen2.5-7b", 8, 4),  # 4 KV heads: past tp 4 they are replicated, not split
        ("llama-3.1-70b", 8, 8),
        ("deepseek-v3", 8, 1),  # vLLM keeps the whole MLA latent cache on every TP rank
    ],
)
def test_vllm_kv_bytes_per_token_per_gpu(
    catalog: Catalog, model: str, tp: int, divisor: int
) -> None:
    m, vllm = catalog.model(model), catalog.engine("vllm")
    total = kv_bytes_per_token(m, vllm, dtype_bytes=2)
    assert kv_bytes_per_token_per_gpu(m, vllm, tp=tp, dtype_bytes=2) == total / divisor


def test_unknown_mla_layout_names_the_field(catalog: Catalog) -> None:
    with pytest.raises(PlanError) as e:
        kv_bytes_per_token(
            catalog.model("deepseek-v3"),
            catalog.engine("llama.cpp"),
            dtype_bytes=2,
            mla_layout="banana",
        )
    assert e.value.field == "mla_cache"
