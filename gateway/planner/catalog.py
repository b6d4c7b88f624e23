"""Catalogs of models, quantizations, GPUs and engines, read from the YAML files in `data/`."""

from __future__ import annotations

import csv
import difflib
import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from gateway.planner.errors import PlanError


@dataclass(frozen=True, kw_only=True)
class Moe:
    routed_experts: int
    shared_experts: int
    active_experts: int
    expert_intermediate_size: int
    first_dense_layers: int
    layer_step: int = 1  # every layer_step-th layer is MoE (Qwen3 MoE `decoder_sparse_step`)
    dense_layers: tuple[int, ...] = ()  # layers kept dense (Qwen3 MoE `mlp_only_layers`)

    def is_moe_layer(self, layer: int) -> bool:
        return (
            layer >= self.first_dense_layers
            and layer not in self.dense_layers
            and (layer + 1) % self.layer_step == 0
        )


@dataclass(frozen=True, kw_only=True)
class Mla:
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True, kw_only=True)
class Model:
    id: str
    name: str
    source: str
    hosted_api: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    max_context: int
    attention_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each query and key head (Qwen3)
    moe: Moe | None = None
    mla: Mla | None = None
    mtp_layers: int = 0

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def is_70b_class(self) -> bool:
        # llama.cpp types 80-layer llama/qwen2 models as LLM_TYPE_70B: attn_v gets more bits
        return self.num_layers == 80 and self.mla is None

    def moe_layers(self) -> tuple[int, ...]:
        return _moe_layers(self.num_layers, self.moe)


@functools.cache  # the scale search asks it for every step it times
def _moe_layers(num_layers: int, moe: Moe | None) -> tuple[int, ...]:
    return tuple(i for i in range(num_layers) if moe and moe.is_moe_layer(i))


@dataclass(frozen=True, kw_only=True)
class Quant:
    id: str
    name: str
    format: str  # gguf | safetensors
    quality: str
    ftype: str | None = None
    # llama-quantize --token-embedding-type / --output-tensor-type (bartowski's *_L files: q8_0)
    token_embedding_type: str | None = None
    output_tensor_type: str | None = None
    linear_bits: float | None = None
    other_bytes: float | None = None
    compute: str = "fp16"
    source: str = ""

    @property
    def is_gguf(self) -> bool:
        return self.format == "gguf"


@dataclass(frozen=True, kw_only=True)
class Gpu:
    id: str
    name: str
    memory_gib: float
    bandwidth_gb_s: float
    fp16_tflops: float
    memory_class: str
    link_gb_s: float
    fp8_tflops: float | None = None
    int8_tops: float | None = None
    nic_gb_s: float | None = None  # scale-out network per GPU (between nodes); None: not known
    price_usd_per_hour: float | None = None
    price_source: str = ""
    reference_only: bool = False
    source: str = ""

    def peak_tflops(self, compute: str) -> float:
        """Tensor-core peak for a compute type, falling back to FP16 where the card lacks it."""
        peak = {"fp8": self.fp8_tflops, "int8": self.int8_tops}.get(compute)
        return peak or self.fp16_tflops


@dataclass(frozen=True, kw_only=True)
class DecodeKnobs:
    eta: float  # achieved share of peak memory bandwidth
    t_fixed_ms: float  # per decode step (launches, scheduler)
    t_seq_us: float = 0.0  # per sequence per step (sampling, detokenisation, bookkeeping)
    gemm_half_tokens: float = 0.0  # tokens per step at which GEMMs reach half their efficiency
    allreduce_latency_us: float | None = None  # None: the engine's


@dataclass(frozen=True, kw_only=True)
class ProfiledKnobs:
    """What the profiled estimator adds to a step's measured kernels (profiled.py)."""

    t_fixed_ms: float = 0.0  # per step: scheduler, launches between the kernels
    t_seq_us: float = 0.0  # per sequence per step: sampling, detokenisation, bookkeeping


@dataclass(frozen=True, kw_only=True)
class Engine:
    id: str
    name: str
    formats: tuple[str, ...]
    multi_gpu: str
    max_gpus_per_replica: int
    decode: Mapping[str, DecodeKnobs]
    prefill_eta: Mapping[str, float]
    runtime_reserve_gib: float
    moe_layer_ms: float = 0.0
    gpus_per_node: int = 8
    gpu_memory_utilization: float = 1.0
    margin_gib: float = 0.0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    allreduce_latency_us: float = 10.0  # per all-reduce and per doubling of the TP degree
    kquant_prefill_factor: float = 1.0
    moe_token_us: float = 0.0  # per MoE layer per token routed (grouped GEMM, dispatch)
    # a request's first token comes this long per layer after its prefill is computed
    # (scheduling, the prefill pass outside CUDA graphs, output processing): TTFT only
    request_layer_ms: float = 0.0
    profiled: ProfiledKnobs = ProfiledKnobs()


@dataclass(frozen=True)
class Catalog:
    models: dict[str, Model]
    quants: dict[str, Quant]
    gpus: dict[str, Gpu]
    engines: dict[str, Engine]
    ggml_types: dict[str, tuple[int, int]]
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)

    def model(self, name: str) -> Model:
        return self.models[self._resolve("model", name)]

    def quant(self, name: str) -> Quant:
        return self.quants[self._resolve("quant", name)]

    def gpu(self, name: str) -> Gpu:
        return self.gpus[self._resolve("gpu", name)]

    def engine(self, name: str) -> Engine:
        return self.engines[self._resolve("engine", name)]

    def default_engine(self, quant: Quant) -> Engine:
        """The engine that serves a quantization's file format (GGUF: llama.cpp, else vLLM)."""
        return self.engines["llama.cpp" if quant.is_gguf else "vllm"]

    def _resolve(self, kind: str, name: str) -> str:
        key = normalize(name)
        table = self.aliases[kind]
        for spelling in (key, key.replace("_", "-")):
            if spelling in table:
                return table[spelling]
        close = difflib.get_close_matches(key, list(table), n=3, cutoff=0.5)
        hint = ", ".join(dict.fromkeys(table[c] for c in close)) or "none"
        raise PlanError(
            f"unknown {kind} {name!r}; closest matches: {hint} (see `cardinal catalog`)", field=kind
        )


def normalize(name: str) -> str:
    """Lowercase, with spaces and underscores unified so `A100 80G` and `a100-80g` meet."""
    return name.strip().lower().replace(" ", "-")


def model_from_hf_config(
    cfg: Mapping[str, Any],
    *,
    id: str,
    name: str | None = None,
    source: str = "",
    hosted_api: str = "deepseek/deepseek-chat",
) -> Model:
    """A Model from the fields of a Hugging Face config.json (Llama, Qwen2/3, Mixtral, DeepSeek)."""
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        layers = int(cfg["num_hidden_layers"])
        inter = int(cfg["intermediate_size"])
        vocab = int(cfg["vocab_size"])
        moe, mla = _moe_from_hf(cfg, inter), _mla_from_hf(cfg)
    except PlanError:
        raise
    except KeyError as e:
        raise PlanError(
            f"config.json lacks `{e.args[0]}`", field=f"model_config.{e.args[0]}"
        ) from None
    except (TypeError, ValueError) as e:
        raise PlanError(
            f"config.json has a non-integer size field: {e}", field="model_config"
        ) from None
    arch = " ".join(cfg.get("architectures") or [])
    bias = bool(cfg.get("attention_bias", "Qwen2" in arch))
    return Model(
        id=id,
        name=name or id,
        source=source,
        hosted_api=hosted_api,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=inter,
        vocab_size=vocab,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_context=int(cfg.get("max_position_embeddings") or 4096),
        attention_bias=bias,
        qk_norm="Qwen3" in arch or str(cfg.get("model_type", "")).startswith("qwen3"),
        moe=moe,
        mla=mla,
        mtp_layers=int(cfg.get("num_nextn_predict_layers") or 0),
    )


def _moe_from_hf(cfg: Mapping[str, Any], inter: int) -> Moe | None:
    # DeepSeek: n_routed_experts; Mixtral: num_local_experts; Qwen3 MoE: num_experts
    routed = int(
        cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    )
    if not routed:
        return None
    step = cfg.get("decoder_sparse_step")
    step = 1 if step is None else int(step)
    if step < 1:
        raise PlanError(
            f"config.json `decoder_sparse_step` must be >= 1, got {step}",
            field="model_config.decoder_sparse_step",
        )
    return Moe(
        routed_experts=routed,
        shared_experts=int(cfg.get("n_shared_experts") or 0),
        active_experts=int(cfg.get("num_experts_per_tok") or 2),
        # Mixtral has no moe_intermediate_size: its intermediate_size is per expert
        expert_intermediate_size=int(cfg.get("moe_intermediate_size") or inter),
        first_dense_layers=int(cfg.get("first_k_dense_replace") or 0),
        layer_step=step,
        dense_layers=tuple(int(i) for i in cfg.get("mlp_only_layers") or ()),
    )


def _mla_from_hf(cfg: Mapping[str, Any]) -> Mla | None:
    if not cfg.get("kv_lora_rank"):
        return None
    return Mla(
        q_lora_rank=cfg.get("q_lora_rank"),
        kv_lora_rank=int(cfg["kv_lora_rank"]),
        qk_nope_head_dim=int(cfg["qk_nope_head_dim"]),
        qk_rope_head_dim=int(cfg["qk_rope_head_dim"]),
        v_head_dim=int(cfg["v_head_dim"]),
    )


def _read(name: str) -> Any:
    text = (
        resources.files("gateway.planner")
        .joinpath("data")
        .joinpath(name)
        .read_text(encoding="utf-8")
    )
    return yaml.safe_load(text)


def _engine(id: str, raw: dict[str, Any]) -> Engine:
    raw = dict(raw)
    decode = {k: DecodeKnobs(**v) for k, v in raw.pop("decode").items()}
    if "profiled" in raw:
        raw["profiled"] = ProfiledKnobs(**raw["profiled"])
    raw.pop("aliases", None)
    return Engine(id=id, decode=decode, formats=tuple(raw.pop("formats")), **raw)


def data_csv(name: str, text: str | None = None) -> list[dict[str, str]]:
    """Rows of a bundled data CSV (reference.csv, serving.csv ...), or of `text` when given."""
    if text is None:
        text = resources.files("gateway.planner").joinpath("data", name).read_text("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


@functools.cache
def load_catalog() -> Catalog:
    """The bundled catalog (read once; entries are frozen)."""
    raw_models, q = _read("models.yaml"), _read("quants.yaml")
    raw_gpus, raw_engines = _read("gpus.yaml"), _read("engines.yaml")
    models = {
        k: model_from_hf_config(
            v["config"], id=k, name=v["name"], source=v["source"], hosted_api=v["hosted_api"]
        )
        for k, v in raw_models.items()
    }
    quants = {
        k: Quant(id=k, **{f: v for f, v in e.items() if f not in ("aliases", "ppl_delta_pct")})
        for k, e in q["quants"].items()
    }
    ggml = {k: (v["block_elems"], v["block_bytes"]) for k, v in q["ggml_types"].items()}
    gpus = {
        k: Gpu(id=k, **{f: v for f, v in e.items() if f != "aliases"}) for k, e in raw_gpus.items()
    }
    engines = {k: _engine(k, e) for k, e in raw_engines.items()}
    aliases: dict[str, dict[str, str]] = {}
    for kind, raw in (
        ("model", raw_models),
        ("quant", q["quants"]),
        ("gpu", raw_gpus),
        ("engine", raw_engines),
    ):
        table: dict[str, str] = {}
        for key, entry in raw.items():
            for spelling in [key, entry.get("name", key), *entry.get("aliases", [])]:
                table[normalize(str(spelling))] = key
                table[normalize(str(spelling)).replace("_", "-")] = key
        aliases[kind] = table
    return Catalog(
        models=models, quants=quants, gpus=gpus, engines=engines, ggml_types=ggml, aliases=aliases
    )
