"""Decode step time and prefill time: roofline with per engine x memory-class efficiency knobs
(docs/formulas.md §4-6)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from gateway.planner.catalog import Engine, Gpu, Model, Quant

PCIE_GB_S = (
    25.0  # effective host-to-device copy rate of PCIe 4.0 x16, for weights streamed in prefill
)


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where a replica's weights live and how its GPUs cooperate. Byte counts cover the replica;
    token_embd is left out of every read, since a lookup touches one row."""

    tp: int = 1  # tensor-parallel ranks
    pp: int = 1  # pipeline stages (vLLM across nodes) or llama.cpp layer-split devices
    gpu_dense_bytes: float  # read every step on the GPUs
    gpu_expert_bytes: float = 0.0  # routed experts resident on GPUs (read when routed to)
    cpu_dense_bytes: float = 0.0  # layers left in host RAM (llama.cpp -ngl)
    cpu_expert_bytes: float = 0.0  # routed experts in host RAM (llama.cpp --n-cpu-moe)
    host_bandwidth_gb_s: float = 100.0

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True, kw_only=True)
class SpeedModel:
    """Everything the step-time formulas need for one replica."""

    model: Model
    quant: Quant
    gpu: Gpu
    engine: Engine
    placement: Placement
    kv_bytes_per_token_gpu: float  # per GPU
    active_params: float  # per token, embedding excluded
    max_num_batched_tokens: int | None = None  # vLLM's chunked-prefill budget; None: the engine's

    @property
    def _knobs(self):  # noqa: ANN202 - DecodeKnobs
        return self.engine.decode[self.gpu.memory_class]

    def expert_fraction(self, batch: float) -> float:
        """Share of routed experts a step of `batch` tokens reads, with near-uniform routing."""
        moe = self.model.moe
        if moe is None:
            return 1.0
        k, e = moe.active_experts, moe.routed_experts
        return 1.0 - (1.0 - k / e) ** max(batch, 1.0)

    def decode_step_s(self, *, batch: float, ctx: float) -> float:
        """Seconds for one decode step of `batch` sequences whose mean context is `ctx` tokens."""
        p, g, knobs = self.placement, self.gpu, self._knobs
        frac = self.expert_fraction(batch)
        gpu_bytes = p.gpu_dense_bytes + p.gpu_expert_bytes * frac
        kv_bytes = batch * ctx * self.kv_bytes_per_token_gpu
        bw = knobs.eta * g.bandwidth_gb_s * 1e9
        # pipeline stages / layer-split devices run one after another for a given token
        t_mem = (gpu_bytes / p.tp + kv_bytes * p.pp) / bw
        t_compute = 2 * self.active_params * batch / (p.tp * self._flops(batch))
        t_cpu = (p.cpu_dense_bytes + p.cpu_expert_bytes * frac) / (p.host_bandwidth_gb_s * 1e9)
        return (
            max(t_mem, t_compute)
            + t_cpu
            + self._comm_s(batch)
            + self._fixed_s()
            + self._per_token_s(batch)
        )

    def prefill_s(self, tokens: int) -> float:
        """Seconds to prefill one prompt of `tokens` tokens on an otherwise idle replica."""
        m, p = self.model, self.placement
        flops = 2 * self.active_params * tokens + m.num_layers * tokens**2 * self._attn_width()
        t_compute = flops / (p.tp * self._flops(tokens))
        chunk = (
            512
            if self.engine.multi_gpu == "layer_split"
            else self.max_num_batched_tokens or self.engine.max_num_batched_tokens
        )
        passes = math.ceil(tokens / chunk)
        bw = self._knobs.eta * self.gpu.bandwidth_gb_s * 1e9
        t_weights = passes * (p.gpu_dense_bytes + p.gpu_expert_bytes) / p.tp / bw
        # llama.cpp copies host-resident weights to the GPU for large batches (op offload)
        t_host = passes * (p.cpu_dense_bytes + p.cpu_expert_bytes) / (PCIE_GB_S * 1e9)
        return max(t_compute, t_weights) + t_host + self._fixed_s()

    def first_token_overhead_s(self) -> float:
        """What a request's first token waits beyond its prefill (Engine.request_layer_ms)."""
        return self.engine.request_layer_ms * self.model.num_layers / 1000

    def _flops(self, tokens: float) -> float:
        """Achieved FLOP/s of one GPU on this quantization's GEMMs with `tokens` rows per step:
        small GEMMs use a fraction of the tensor cores (tokens / (tokens + gemm_half_tokens))."""
        half = self._knobs.gemm_half_tokens
        eta = self.engine.prefill_eta[self.gpu.memory_class] * (
            1.0 if half <= 0 else max(tokens, 1.0) / (max(tokens, 1.0) + half)
        )
        peak = self.gpu.peak_tflops(self.quant.compute) * 1e12
        if self.quant.is_gguf and self.quant.ftype not in ("f16", "f32", "bf16"):
            eta *= self.engine.kquant_prefill_factor
        return eta * peak

    def _attn_width(self) -> float:
        """heads x (d_qk + d_v): the causal attention FLOPs per layer per token pair."""
        m = self.model
        if m.mla:
            return m.num_heads * (
                m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim + m.mla.v_head_dim
            )
        return m.num_heads * 2 * m.head_dim

    def _comm_s(self, batch: float) -> float:
        p = self.placement
        if p.tp == 1 or self.gpu.link_gb_s <= 0:
            return 0.0
        m = self.model
        volume = 2 * (p.tp - 1) / p.tp * batch * m.hidden_size * 2  # ring all-reduce, 16-bit
        # latency per all-reduce grows with the steps of the collective: log2(tp)
        us = self._knobs.allreduce_latency_us
        latency = (self.engine.allreduce_latency_us if us is None else us) * 1e-6 * math.log2(p.tp)
        per = latency + volume / (self.gpu.link_gb_s * 1e9)
        return 2 * m.num_layers * per  # two all-reduces per layer

    @functools.cached_property
    def _moe_layers(self) -> int:
        # counted once: decode_step_s runs for every simulated step and every searched plan
        return len(self.model.moe_layers())

    def _fixed_s(self) -> float:
        return (self._knobs.t_fixed_ms + self.engine.moe_layer_ms * self._moe_layers) / 1000

    def _per_token_s(self, batch: float) -> float:
        """Costs that grow with the sequences in a step: sampling and bookkeeping per sequence,
        and the MoE layers' routing and grouped GEMMs per routed token."""
        per_seq = self._knobs.t_seq_us + self.engine.moe_token_us * self._moe_layers
        return batch * per_seq * 1e-6

    def decode_tokens_per_s(self, *, ctx: float) -> float:
        return 1.0 / self.decode_step_s(batch=1, ctx=ctx)


def active_params(model: Model, *, params_by_group: dict[str, int]) -> float:
    """Parameters one token multiplies through (no embedding lookup; routed experts pro rata)."""
    dense = sum(v for k, v in params_by_group.items() if k not in ("embd", "experts", "mtp"))
    if model.moe is None:
        return float(dense)
    share = model.moe.active_experts / model.moe.routed_experts
    return dense + params_by_group.get("experts", 0) * share
