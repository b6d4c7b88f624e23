"""Weight memory: the bytes of every tensor under a quantization, GGUF mixes included."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from gateway.planner.catalog import Catalog, Model, Quant
from gateway.planner.tensors import Tensor, tensors

# The ggml type a llama-quantize ftype uses by default (src/llama-quant.cpp ftype -> type map).
_BASE = {
    "q2_k": "q2_k",
    "q3_k_s": "q3_k",
    "q3_k_m": "q3_k",
    "q3_k_l": "q3_k",
    "q4_k_s": "q4_k",
    "q4_k_m": "q4_k",
    "q5_k_s": "q5_k",
    "q5_k_m": "q5_k",
    "q6_k": "q6_k",
    "q6_k_l": "q6_k",  # bartowski's Q6_K with --token-embedding-type/--output-tensor-type q8_0
    "q8_0": "q8_0",
    "q4_0": "q4_0",
    "q4_1": "q4_1",
    "q5_0": "q5_0",
    "q5_1": "q5_1",
    "iq4_xs": "iq4_xs",
    "iq2_xxs": "iq2_xxs",
    "iq1_s": "iq1_s",
    "f16": "f16",
    "f32": "f32",
    "bf16": "bf16",
}
# Types a tensor falls back to when no whole number of blocks fits its row
# (convert_incompatible_tensor).
_FALLBACK = {
    "q2_k": "iq4_nl",
    "q3_k": "iq4_nl",
    "iq4_xs": "iq4_nl",
    "iq2_xxs": "iq4_nl",
    "iq1_s": "iq4_nl",
    "iq3_s": "iq4_nl",
    "q4_k": "q5_0",
    "q5_k": "q5_1",
    "q6_k": "q8_0",
}
_LOW_IQ = ("iq2_xxs", "iq1_s")
_BLOCK_32 = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
# ftypes whose attn_output goes to Q5_K in 8-expert models (Mixtral)
_MOE8_ATTN_OUTPUT_Q5_K = ("q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m", "iq4_xs")


@dataclass(frozen=True, kw_only=True)
class PlacedTensor:
    tensor: Tensor
    dtype: str
    bytes: int


@dataclass(frozen=True, kw_only=True)
class Weights:
    """Every tensor with its storage type and size, and the sums the planner needs."""

    items: tuple[PlacedTensor, ...]

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.items)

    @property
    def params(self) -> int:
        return sum(p.tensor.n_elem for p in self.items)

    def bytes_by_group(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for p in self.items:
            out[p.tensor.group] += p.bytes
        return dict(out)

    def params_by_group(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for p in self.items:
            out[p.tensor.group] += p.tensor.n_elem
        return dict(out)

    def layer_bytes(self, layer: int, *, groups: tuple[str, ...] | None = None) -> int:
        return sum(
            p.bytes
            for p in self.items
            if p.tensor.layer == layer and (groups is None or p.tensor.group in groups)
        )

    def bits_per_weight(self) -> float:
        return 8 * self.total_bytes / self.params


def weights(model: Model, quant: Quant, catalog: Catalog, *, include_mtp: bool = False) -> Weights:
    """Bytes of each tensor of `model` stored as `quant`."""
    ts = tensors(model, include_mtp=include_mtp)
    if quant.is_gguf:
        types = _gguf_types(model, quant, ts)
        items = [
            PlacedTensor(tensor=t, dtype=d, bytes=_gguf_bytes(t, d, catalog))
            for t, d in zip(ts, types, strict=True)
        ]
    else:
        items = [
            PlacedTensor(tensor=t, dtype=quant.id, bytes=_safetensors_bytes(t, quant)) for t in ts
        ]
    return Weights(items=tuple(items))


def _gguf_bytes(t: Tensor, dtype: str, catalog: Catalog) -> int:
    elems, size = catalog.ggml_types[dtype] if dtype != "iq4_nl" else (32, 18)
    return math.ceil(t.n_elem / elems) * size


def _safetensors_bytes(t: Tensor, quant: Quant) -> int:
    if t.is_1d or t.group in ("embd", "output", "router"):
        return int(t.n_elem * (quant.other_bytes or 2))
    return int(t.n_elem * (quant.linear_bits or 16) / 8)


def _gguf_types(model: Model, quant: Quant, ts: list[Tensor]) -> list[str]:
    ftype = quant.ftype or "f16"
    base = _BASE[ftype]
    if base in ("f16", "f32", "bf16"):
        return ["f32" if t.is_1d or t.group == "router" else base for t in ts]
    rules = _MixRules(model, ftype, n_attn_v=sum(1 for t in ts if "attn_v.weight" in t.name))
    overrides = {"embd": quant.token_embedding_type, "output": quant.output_tensor_type}
    out = []
    for t in ts:
        if t.is_1d or t.group == "router":  # norms and biases, and MoE gating: never quantized
            out.append("f32")
            continue
        if overrides.get(t.group):  # llama-quantize applies these as given, with no fallback
            out.append(str(overrides[t.group]))
            continue
        dtype = rules.type_for(t, base)
        elems = 32 if dtype in _BLOCK_32 else 256
        if t.row % elems:
            dtype = _FALLBACK.get(dtype, "q8_0")
        out.append(dtype)
    return out


class _MixRules:
    """llama.cpp's llama_tensor_get_type for the ftypes in the catalog, with its tensor counters."""

    def __init__(self, model: Model, ftype: str, *, n_attn_v: int) -> None:
        self.m, self.ftype = model, ftype
        self.n_layer = model.num_layers
        self.n_attn_v = n_attn_v
        self.i_attn_v = 0
        self.i_ffn_down = 0
        n_gqa = model.num_heads // max(1, model.num_kv_heads)
        self.gqa4 = n_gqa >= 4
        self.n_expert = model.moe.routed_experts if model.moe else 0

    def more_bits(self, i: int, n: int) -> bool:
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    def type_for(self, t: Tensor, base: str) -> str:
        f, name = self.ftype, t.name
        # a tied token_embd is the output matrix too, and gets its type
        if t.group == "output" or (t.group == "embd" and self.m.tie_embeddings):
            if t.row % 256 and base != "q8_0":
                return "q8_0"
            return "q5_k" if f in _LOW_IQ else ("q8_0" if base == "q8_0" else "q6_k")
        if t.group == "embd":
            return "q2_k" if f in _LOW_IQ else base
        if f in _LOW_IQ:
            return self._low_iq(name, base)
        if "attn_v.weight" in name:
            return self._attn_v(base)
        if "attn_k.weight" in name and self.n_expert == 8:
            return "q8_0"  # "for the 8-expert model, bumping this to Q8_0 trades just ~128MB"
        if "ffn_down" in name:
            return self._ffn_down(t, base)
        if "attn_output.weight" in name:
            return self._attn_output(base)
        return base

    def _attn_output(self, base: str) -> str:
        if self.n_expert == 8:
            return "q5_k" if self.ftype in _MOE8_ATTN_OUTPUT_Q5_K else base
        return {"q2_k": "q3_k", "q3_k_m": "q4_k", "q3_k_l": "q5_k"}.get(self.ftype, base)

    def _low_iq(self, name: str, base: str) -> str:
        if "attn_v.weight" in name:
            self.i_attn_v += 1
            return "q4_k" if self.gqa4 or self.n_expert >= 4 else "q2_k"
        if "attn_k.weight" in name and self.n_expert == 8:
            return "q4_k"
        if "attn_output.weight" in name and self.n_expert == 8:
            return "q5_k"
        if "ffn_down" in name:
            low = self.i_ffn_down < self.n_layer // 8
            self.i_ffn_down += 1
            return "q2_k" if low else base
        if "attn_output.weight" in name and self.ftype == "iq1_s":
            return "iq2_xxs"
        return base

    def _attn_v(self, base: str) -> str:
        f, i = self.ftype, self.i_attn_v
        self.i_attn_v += 1
        new = base
        if f == "q2_k":
            new = "q4_k" if self.gqa4 else "q3_k"
        elif f == "q3_k_m":
            new = "q5_k" if i < 2 else "q4_k"
        elif f == "q3_k_l" or f == "iq4_xs" and self.gqa4:
            new = "q5_k"
        elif f in ("q4_k_m", "q5_k_m") and self.more_bits(i, self.n_attn_v):
            new = "q6_k"
        elif f == "q4_k_s" and i < 4:
            new = "q5_k"
        if self.m.is_70b_class and new in ("q3_k", "q4_k"):
            new = "q5_k"
        return "q8_0" if self.n_expert == 8 else new

    def _ffn_down(self, t: Tensor, base: str) -> str:
        # MoE models take the layer from the tensor name; dense ones count ffn_down tensors
        i = t.layer if self.n_expert > 1 and t.layer is not None else self.i_ffn_down
        self.i_ffn_down += 1
        n, f = self.n_layer, self.ftype
        if f == "q2_k":
            return "q3_k"
        if f == "q3_k_m":
            return "q5_k" if i < n // 16 else "q4_k"
        if f == "q3_k_l":
            return "q5_k"
        if f in ("q4_k_m", "q5_k_m"):
            return "q6_k" if self.more_bits(i, n) else base
        if f == "iq4_xs" and i < n // 8:
            return "q5_k"
        if f == "q4_k_s" and i < n // 8:
            return "q5_k"
        return base
