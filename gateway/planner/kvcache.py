"""KV-cache bytes per token, as each engine stores it (docs/formulas.md §2)."""

from __future__ import annotations

from gateway.planner.catalog import Engine, Model
from gateway.planner.errors import PlanError

# llama.cpp's cache for DeepSeek MLA GGUFs, by GGUF/build generation (elements per layer per token):
#   latent:    c_KV + k_rope only, V read from it (builds since llama.cpp PR #19067, 2026-01)
#   latent-kv: K (576) and V (512) stored separately (PR #12801 GGUFs on older builds)
#   legacy:    decompressed K and V of all heads (GGUFs converted before PR #12801)
MLA_LAYOUTS = ("latent", "latent-kv", "legacy")


def kv_bytes_per_token(
    model: Model, engine: Engine, *, dtype_bytes: float, mla_layout: str = "latent"
) -> float:
    """KV bytes one token occupies in the whole model (all layers, all heads)."""
    if model.mla is None:
        return 2 * model.num_layers * model.num_kv_heads * model.head_dim * dtype_bytes
    a = model.mla
    latent = a.kv_lora_rank + a.qk_rope_head_dim
    if engine.id != "llama.cpp" or mla_layout == "latent":
        per_layer = latent
    elif mla_layout == "latent-kv":
        per_layer = latent + a.kv_lora_rank
    elif mla_layout == "legacy":
        per_layer = model.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim)
    else:
        raise PlanError(
            f"`mla_cache` must be one of {', '.join(MLA_LAYOUTS)}, not {mla_layout!r}",
            field="mla_cache",
        )
    return model.num_layers * per_layer * dtype_bytes


def kv_bytes_per_token_per_gpu(
    model: Model,
    engine: Engine,
    *,
    tp: int,
    pp: int = 1,
    dtype_bytes: float,
    mla_layout: str = "latent",
) -> float:
    """Per GPU of a replica: pipeline stages split the layers; tensor parallelism splits GQA heads
    (replicating them past n_kv_heads), while vLLM's MLA cache is replicated on every TP rank."""
    total = kv_bytes_per_token(model, engine, dtype_bytes=dtype_bytes, mla_layout=mla_layout) / pp
    if engine.multi_gpu != "tensor_parallel":
        return total / tp  # llama.cpp layer split: each GPU holds its own layers' cache
    if model.mla is not None:
        return total
    return total / min(tp, model.num_kv_heads)
