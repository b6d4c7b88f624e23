"""Catalog gaps (issue 13, item 6): legacy GGUF quants and Q6_K_L, newer GPUs, Qwen3 and Mixtral
configs, each against a published figure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.planner.catalog import Catalog, Model, load_catalog, model_from_hf_config
from gateway.planner.errors import PlanError
from gateway.planner.kvcache import kv_bytes_per_token
from gateway.planner.speed import active_params
from gateway.planner.tensors import param_count
from gateway.planner.weights import weights

CONFIGS = Path(__file__).parent / "data" / "configs"
GIB = 2**30


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text(encoding="utf-8"))


def from_config(name: str) -> Model:
    return model_from_hf_config(config(name), id=name)


def dtypes(model: Model, quant: str, catalog: Catalog, layer: int | None) -> dict[str, str]:
    """Storage type of each tensor of one layer (None: token_embd, output_norm, output)."""
    w = weights(model, catalog.quant(quant), catalog)
    return {p.tensor.name: p.dtype for p in w.items if p.tensor.layer == layer}


# Llama-3-8B file sizes in GiB, llama.cpp tools/perplexity/README.md "LLaMA 3 8b Scoreboard"
# (revision f364eb6f, no imatrix). Llama-3.1-8B has the same tensors.
@pytest.mark.parametrize(("quant", "gib"), [("q4_1", 4.78), ("q5_0", 5.21), ("q5_1", 5.65)])
def test_llama_3_8b_legacy_quant_sizes(catalog: Catalog, quant: str, gib: float) -> None:
    w = weights(catalog.model("llama-3-8b"), catalog.quant(quant), catalog)
    assert w.total_bytes / GIB == pytest.approx(gib, rel=0.005)


def test_llama_3_1_8b_q6_k_l_size(catalog: Catalog) -> None:
    # bartowski/Meta-Llama-3.1-8B-Instruct-GGUF model card (llama.cpp b3472): Q6_K_L 6.85 GB
    w = weights(catalog.model("llama-3.1-8b"), catalog.quant("q6_k_l"), catalog)
    assert w.total_bytes / 1e9 == pytest.approx(6.85, rel=0.005)


# bartowski/Qwen_Qwen3-32B-GGUF model card (llama.cpp b5200), GB. Its files use an imatrix, which
# only moves Q4_0 (ffn_down of the first eighth of layers to Q4_1), so Q4_0 is left out.
@pytest.mark.parametrize(
    ("quant", "gb"),
    [
        ("q8_0", 34.82),
        ("q6_k_l", 27.26),
        ("q6_k", 26.88),
        ("q5_k_m", 23.21),
        ("q4_1", 20.64),
        ("q4_k_m", 19.76),
    ],
)
def test_qwen3_32b_gguf_sizes(catalog: Catalog, quant: str, gb: float) -> None:
    w = weights(from_config("qwen3-32b"), catalog.quant(quant), catalog)
    assert w.total_bytes / 1e9 == pytest.approx(gb, rel=0.003)


@pytest.mark.parametrize("quant", ["q4_1", "q5_0", "q5_1"])
def test_legacy_quant_mix(catalog: Catalog, quant: str) -> None:
    # llama_tensor_get_type: output.weight -> Q6_K; no other rule names these ftypes without imatrix
    model = catalog.model("llama-3.1-8b")
    top = dtypes(model, quant, catalog, None)
    assert top == {"token_embd.weight": quant, "output_norm.weight": "f32", "output.weight": "q6_k"}
    layer = dtypes(model, quant, catalog, 0)
    assert {d for n, d in layer.items() if "norm" not in n} == {quant}


def test_q6_k_l_mix(catalog: Catalog) -> None:
    model = catalog.model("llama-3.1-8b")
    top = dtypes(model, "q6_k_l", catalog, None)
    assert (top["token_embd.weight"], top["output.weight"]) == ("q8_0", "q8_0")
    layer = dtypes(model, "q6_k_l", catalog, 5)
    assert {d for n, d in layer.items() if "norm" not in n} == {"q6_k"}


@pytest.mark.parametrize(
    ("quant", "attn_output"), [("q4_k_m", "q5_k"), ("q5_0", "q5_0"), ("q6_k", "q6_k")]
)
def test_mixtral_eight_expert_rules(catalog: Catalog, quant: str, attn_output: str) -> None:
    # "for the 8-expert model, bumping this to Q8_0 trades just ~128MB": attn_k and attn_v
    layer = dtypes(from_config("mixtral-8x7b"), quant, catalog, 0)
    assert layer["blk.0.attn_k.weight"] == layer["blk.0.attn_v.weight"] == "q8_0"
    assert layer["blk.0.attn_output.weight"] == attn_output


def test_tied_embeddings_take_the_output_type(catalog: Catalog) -> None:
    cfg = {**config("qwen3-32b"), "tie_word_embeddings": True}
    model = model_from_hf_config(cfg, id="tied")
    top = dtypes(model, "q4_k_m", catalog, None)
    assert top == {"token_embd.weight": "q6_k", "output_norm.weight": "f32"}


# Published totals and active parameters (Qwen3 technical report / model cards; Mixtral of
# Experts paper). Active counts embeddings and the output head, as both publishers do.
@pytest.mark.parametrize(
    ("name", "total", "active", "tol"),
    [
        ("qwen3-32b", 32.8e9, 32.8e9, 0.05e9),
        ("qwen3-30b-a3b", 30.5e9, 3.3e9, 0.06e9),
        ("qwen3-235b-a22b", 235e9, 22e9, 0.5e9),
        ("mixtral-8x7b", 46.7e9, 12.9e9, 0.05e9),
    ],
)
def test_hf_config_param_counts(
    catalog: Catalog, name: str, total: float, active: float, tol: float
) -> None:
    model = from_config(name)
    by_group = weights(model, catalog.quant("fp16"), catalog).params_by_group()
    assert param_count(model) == pytest.approx(total, abs=tol)
    assert active_params(model, params_by_group=by_group) + by_group["embd"] == pytest.approx(
        active, abs=tol
    )


def test_qwen3_attention_shape(catalog: Catalog) -> None:
    model = from_config("qwen3-32b")
    # head_dim is given (128), not hidden / heads (80): q is 64 x 128 = 8192 wide
    assert (model.head_dim, model.qk_norm, model.attention_bias) == (128, True, False)
    layer = weights(model, catalog.quant("fp16"), catalog).items
    sizes = {p.tensor.name: p.tensor.n_elem for p in layer if p.tensor.layer == 0}
    assert sizes["blk.0.attn_q.weight"] == 5120 * 8192
    assert sizes["blk.0.attn_q_norm.weight"] == sizes["blk.0.attn_k_norm.weight"] == 128
    assert kv_bytes_per_token(model, catalog.engine("vllm"), dtype_bytes=2) == 256 * 1024


def test_qwen3_moe_has_no_shared_experts() -> None:
    model = from_config("qwen3-30b-a3b")
    assert model.moe is not None
    assert (model.moe.routed_experts, model.moe.active_experts) == (128, 8)
    assert (model.moe.shared_experts, model.moe.expert_intermediate_size) == (0, 768)
    assert model.moe_layers() == tuple(range(48))


def test_qwen3_moe_sparse_step_and_mlp_only_layers(catalog: Catalog) -> None:
    cfg = {**config("qwen3-30b-a3b"), "decoder_sparse_step": 2, "mlp_only_layers": [1]}
    model = model_from_hf_config(cfg, id="sparse")
    # HF Qwen3MoeDecoderLayer: MoE where (i + 1) % step == 0 and i is not in mlp_only_layers
    assert model.moe_layers() == tuple(range(3, 48, 2))
    layer1 = dtypes(model, "fp16", catalog, 1)
    assert "blk.1.ffn_up.weight" in layer1 and "blk.1.ffn_up_exps.weight" not in layer1
    assert "blk.3.ffn_up_exps.weight" in dtypes(model, "fp16", catalog, 3)


def test_bad_sparse_step_names_the_field() -> None:
    cfg = {**config("qwen3-30b-a3b"), "decoder_sparse_step": 0}
    with pytest.raises(PlanError, match="decoder_sparse_step") as e:
        model_from_hf_config(cfg, id="bad")
    assert e.value.field == "model_config.decoder_sparse_step"


@pytest.mark.parametrize("name", ["qwen3-32b", "qwen3-30b-a3b", "qwen3-235b-a22b", "mixtral-8x7b"])
def test_plan_from_model_config(capsys: pytest.CaptureFixture[str], name: str) -> None:
    argv = ["plan", "--model-config", str(CONFIGS / f"{name}.json"), "--quant", "q4_k_m"]
    workload = ["--target-qps", "1", "--prompt-tokens", "512", "--output-tokens", "256"]
    code = main([*argv, "--gpu", "h200", *workload, "--json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert json.loads(out)["memory"]["weights_gib"] > 0


# New GPUs: (alias, id, memory_gib, bandwidth_gb_s, fp16_tflops, link_gb_s), vendor datasheets
@pytest.mark.parametrize(
    ("alias", "gpu", "mem", "bw", "fp16", "link"),
    [
        ("b200", "b200", 179, 8000, 2250, 900),
        ("h20", "h20", 96, 4000, 148, 450),
        ("h800", "h800", 80, 3350, 989, 200),
        ("l40", "l40", 45, 864, 181, 32),
        ("rtx4070", "rtx-4070", 12, 504, 117, 32),
        ("4080", "rtx-4080", 16, 717, 195, 32),
        ("5090", "rtx-5090", 32, 1792, 419, 64),
        ("rtx5090", "rtx-5090", 32, 1792, 419, 64),
        ("mi325x", "mi325x", 256, 6000, 1307, 448),
    ],
)
def test_new_gpus(
    catalog: Catalog, alias: str, gpu: str, mem: float, bw: float, fp16: float, link: float
) -> None:
    g = catalog.gpu(alias)
    assert (g.id, g.memory_gib, g.bandwidth_gb_s, g.fp16_tflops, g.link_gb_s) == (
        gpu,
        mem,
        bw,
        fp16,
        link,
    )
    assert g.peak_tflops("fp8") == pytest.approx(2 * fp16, rel=0.01)  # FP8 at twice FP16
    assert g.source


def test_h100_alias_no_longer_covers_h800(catalog: Catalog) -> None:
    assert catalog.gpu("h100").id == "h100-sxm"
    assert catalog.gpu("h800").link_gb_s < catalog.gpu("h100").link_gb_s


def test_every_price_is_dated_and_sourced(catalog: Catalog) -> None:
    for g in catalog.gpus.values():
        if g.price_usd_per_hour is not None:
            assert re.search(r"\d{4}-\d{2}", g.price_source), g.id
