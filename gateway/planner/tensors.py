"""The tensors of a model, named as llama.cpp names them in a GGUF file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.planner.catalog import Model


@dataclass(frozen=True, kw_only=True)
class Tensor:
    name: str
    layer: int | None  # None for token_embd, output and output_norm
    row: int  # ne[0], the length that quantization blocks must divide
    n_elem: int
    group: str  # embd | output | norm | attn | ffn | router | experts | shared | mtp

    @property
    def is_1d(self) -> bool:
        return self.row == self.n_elem


def tensors(model: Model, *, include_mtp: bool = False) -> list[Tensor]:
    """All weight tensors of `model` in file order (MTP layers only when asked: GGUFs omit them)."""
    out = [_t("token_embd.weight", None, model.hidden_size, model.vocab_size, "embd")]
    for layer in range(model.num_layers):
        out += _layer(model, layer, group_override=None)
    out.append(_norm("output_norm.weight", None, model.hidden_size))
    if not model.tie_embeddings:
        out.append(_t("output.weight", None, model.hidden_size, model.vocab_size, "output"))
    if include_mtp:
        out += _mtp(model)
    return out


def _t(name: str, layer: int | None, row: int, rows: int, group: str) -> Tensor:
    return Tensor(name=name, layer=layer, row=row, n_elem=row * rows, group=group)


def _norm(name: str, layer: int | None, n: int) -> Tensor:
    return Tensor(name=name, layer=layer, row=n, n_elem=n, group="norm")


def _layer(model: Model, i: int, *, group_override: str | None) -> list[Tensor]:
    items = [_norm(f"blk.{i}.attn_norm.weight", i, model.hidden_size)]
    items += list(_mla(model, i) if model.mla else _gqa(model, i))
    items.append(_norm(f"blk.{i}.ffn_norm.weight", i, model.hidden_size))
    moe = model.moe
    if moe and moe.is_moe_layer(i):
        items += list(_moe_ffn(model, i))
    else:
        items += list(_dense_ffn(model, i))
    if group_override:
        items = [
            Tensor(name=t.name, layer=t.layer, row=t.row, n_elem=t.n_elem, group=group_override)
            for t in items
        ]
    return items


def _gqa(m: Model, i: int) -> Iterator[Tensor]:
    q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    yield _t(f"blk.{i}.attn_q.weight", i, m.hidden_size, q, "attn")
    yield _t(f"blk.{i}.attn_k.weight", i, m.hidden_size, kv, "attn")
    yield _t(f"blk.{i}.attn_v.weight", i, m.hidden_size, kv, "attn")
    if m.qk_norm:
        yield _norm(f"blk.{i}.attn_q_norm.weight", i, m.head_dim)
        yield _norm(f"blk.{i}.attn_k_norm.weight", i, m.head_dim)
    if m.attention_bias:
        yield _norm(f"blk.{i}.attn_q.bias", i, q)
        yield _norm(f"blk.{i}.attn_k.bias", i, kv)
        yield _norm(f"blk.{i}.attn_v.bias", i, kv)
    yield _t(f"blk.{i}.attn_output.weight", i, q, m.hidden_size, "attn")


def _mla(m: Model, i: int) -> Iterator[Tensor]:
    a = m.mla
    assert a is not None
    qk = a.qk_nope_head_dim + a.qk_rope_head_dim
    if a.q_lora_rank:
        yield _t(f"blk.{i}.attn_q_a.weight", i, m.hidden_size, a.q_lora_rank, "attn")
        yield _norm(f"blk.{i}.attn_q_a_norm.weight", i, a.q_lora_rank)
        yield _t(f"blk.{i}.attn_q_b.weight", i, a.q_lora_rank, m.num_heads * qk, "attn")
    else:
        yield _t(f"blk.{i}.attn_q.weight", i, m.hidden_size, m.num_heads * qk, "attn")
    yield _t(
        f"blk.{i}.attn_kv_a_mqa.weight",
        i,
        m.hidden_size,
        a.kv_lora_rank + a.qk_rope_head_dim,
        "attn",
    )
    yield _norm(f"blk.{i}.attn_kv_a_norm.weight", i, a.kv_lora_rank)
    yield _t(
        f"blk.{i}.attn_kv_b.weight",
        i,
        a.kv_lora_rank,
        m.num_heads * (a.qk_nope_head_dim + a.v_head_dim),
        "attn",
    )
    yield _t(f"blk.{i}.attn_output.weight", i, m.num_heads * a.v_head_dim, m.hidden_size, "attn")


def _dense_ffn(m: Model, i: int) -> Iterator[Tensor]:
    yield _t(f"blk.{i}.ffn_gate.weight", i, m.hidden_size, m.intermediate_size, "ffn")
    yield _t(f"blk.{i}.ffn_up.weight", i, m.hidden_size, m.intermediate_size, "ffn")
    yield _t(f"blk.{i}.ffn_down.weight", i, m.intermediate_size, m.hidden_size, "ffn")


def _moe_ffn(m: Model, i: int) -> Iterator[Tensor]:
    e = m.moe
    assert e is not None
    n, f, h = e.routed_experts, e.expert_intermediate_size, m.hidden_size
    yield _t(f"blk.{i}.ffn_gate_inp.weight", i, h, n, "router")
    yield _t(f"blk.{i}.ffn_gate_exps.weight", i, h, f * n, "experts")
    yield _t(f"blk.{i}.ffn_down_exps.weight", i, f, h * n, "experts")
    yield _t(f"blk.{i}.ffn_up_exps.weight", i, h, f * n, "experts")
    if e.shared_experts:
        s = f * e.shared_experts
        yield _t(f"blk.{i}.ffn_gate_shexp.weight", i, h, s, "shared")
        yield _t(f"blk.{i}.ffn_down_shexp.weight", i, s, h, "shared")
        yield _t(f"blk.{i}.ffn_up_shexp.weight", i, h, s, "shared")


def _mtp(m: Model) -> list[Tensor]:
    """DeepSeek's multi-token-prediction module: one more layer with its own embedding and head."""
    out: list[Tensor] = []
    h = m.hidden_size
    for k in range(m.mtp_layers):
        i = m.num_layers + k
        out += _layer(m, i, group_override="mtp")
        out.append(_t(f"blk.{i}.eh_proj.weight", i, 2 * h, h, "mtp"))
        out.append(_t(f"blk.{i}.embed_tokens.weight", i, h, m.vocab_size, "mtp"))
        out.append(_t(f"blk.{i}.shared_head.head.weight", i, h, m.vocab_size, "mtp"))
    return out


def param_count(model: Model, *, include_mtp: bool = False) -> int:
    return sum(t.n_elem for t in tensors(model, include_mtp=include_mtp))
