"""MoE models the way they are served at scale: expert parallelism with data-parallel attention
(EP/DP), prefill/decode disaggregation (PD) and multi-token prediction (MTP), per GPU of an
expert-parallel group (docs/formulas.md section 8; constants in data/scale.yaml).

In an EP group of N GPUs every GPU is one attention DP rank: it holds the dense weights (attention,
shared experts, dense layers, LM head) and the latent KV cache of its own requests only, and
1/N of the routed experts (plus redundant copies for load balance). A step is timed kernel by
kernel (dense GEMMs, expert GEMMs, attention, each the slower of its bytes and its FLOPs) plus the
all-to-all that sends every token to its experts' GPUs and back (DeepEP dispatch and combine),
partly hidden behind compute by two-batch overlap.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

import yaml

from gateway.planner.catalog import Catalog, Gpu, Model, Quant
from gateway.planner.errors import PlanError
from gateway.planner.kvcache import kv_bytes_per_token
from gateway.planner.weights import weights

GiB = 1024**3
DENSE_GROUPS = ("attn", "ffn", "router", "shared", "output", "norm")


@dataclass(frozen=True, kw_only=True)
class ScaleKnobs:
    """data/scale.yaml: what an EP/DP/PD deployment costs beyond the roofline, each sourced."""

    engine: str
    gpus_per_node: int
    redundant_experts: int
    eplb_imbalance: float
    dispatch_bytes: float
    combine_bytes: float
    a2a_latency_us: float
    nvlink_efficiency: float
    nic_efficiency: float
    node_limit: int
    prefill_tokens_per_gpu: int
    overlap: float
    gemm_eta: float
    attn_eta: float
    t_fixed_ms: float
    memory_utilization: float
    activation_reserve_gib: float
    max_running_per_gpu: int
    mtp_accept: float
    kv_dtype_bytes: float
    group_nodes: tuple[int, ...]
    source: str = ""


@functools.cache
def load_knobs() -> ScaleKnobs:
    raw = yaml.safe_load(
        resources.files("gateway.planner").joinpath("data", "scale.yaml").read_text("utf-8")
    )
    raw["group_nodes"] = tuple(raw["group_nodes"])
    return ScaleKnobs(**raw)


@dataclass(frozen=True, kw_only=True)
class Group:
    """One EP group: N GPUs of one kind serving one MoE model, each an attention DP rank."""

    model: Model
    quant: Quant
    gpu: Gpu
    gpus: int
    knobs: ScaleKnobs
    dense_bytes: float  # per GPU: every DP rank holds them
    expert_bytes: float  # all routed experts of the model, once
    dense_params: float  # multiplied by every token (embedding excluded)
    expert_params_per_token: float  # routed experts' parameters one token multiplies through
    kv_bytes_per_token: float  # latent cache, all layers, on the one GPU holding the request
    mem_eta: float  # achieved share of HBM bandwidth: the TP engine's fitted one (engines.yaml)

    @property
    def experts_per_gpu(self) -> float:
        moe = self.model.moe
        assert moe is not None
        return (moe.routed_experts + self.knobs.redundant_experts) / self.gpus

    @property
    def expert_bytes_per_gpu(self) -> float:
        moe = self.model.moe
        assert moe is not None
        return self.expert_bytes / moe.routed_experts * self.experts_per_gpu

    @property
    def kv_budget_bytes(self) -> float:
        """Per GPU: what the memory holds for KV after the weights and activations."""
        k = self.knobs
        usable = self.gpu.memory_gib * GiB * k.memory_utilization - k.activation_reserve_gib * GiB
        return usable - self.dense_bytes - self.expert_bytes_per_gpu

    @property
    def nodes(self) -> int:
        return math.ceil(self.gpus / self.knobs.gpus_per_node)

    def problem(self) -> str:
        """Why this group cannot serve at all (empty when it can)."""
        if self.model.moe is None:
            return f"{self.model.name} is dense: expert parallelism needs an MoE model"
        if self.quant.compute == "fp8" and not self.gpu.fp8_tflops:
            return f"{self.gpu.name} has no FP8 tensor cores for the FP8 GEMMs (use int8: W8A8)"
        if self.kv_budget_bytes <= 0:
            need = (self.dense_bytes + self.expert_bytes_per_gpu) / GiB
            return (
                f"{need:.0f} GiB of weights per GPU leave no KV cache on "
                f"{self.gpu.name}'s {self.gpu.memory_gib:g} GiB"
            )
        if self.gpus > self.knobs.gpus_per_node and not self.gpu.nic_gb_s:
            return f"{self.gpu.name} has no scale-out network in the catalog (nic_gb_s)"
        return ""

    # -- one step ---------------------------------------------------------------------------

    def _gemm_flops(self) -> float:
        return self.gpu.peak_tflops(self.quant.compute) * 1e12 * self.knobs.gemm_eta

    def _attn_flops(self) -> float:
        return self.gpu.fp16_tflops * 1e12 * self.knobs.attn_eta  # attention runs in 16 bit

    def _bw(self) -> float:
        return self.gpu.bandwidth_gb_s * 1e9 * self.mem_eta

    def _a2a_s(self, tokens: float, *, prefill: bool) -> float:
        """Dispatch (FP8) plus combine (BF16) of `tokens` tokens on one GPU, over all MoE layers.

        Decode uses DeepEP's low-latency kernels: every token goes to each of its k experts'
        GPUs on its own, over RDMA once the group spans nodes. Prefill uses the normal kernels:
        a token crosses to each remote node it routes to once (at most `node_limit` nodes) and is
        forwarded over NVLink inside it. NVLink and the NIC run at the same time."""
        moe, k = self.model.moe, self.knobs
        assert moe is not None
        if self.gpus == 1:
            return 0.0
        copy = self.model.hidden_size * (k.dispatch_bytes + k.combine_bytes)
        nvlink = self.gpu.link_gb_s * 1e9 * k.nvlink_efficiency
        nic = (self.gpu.nic_gb_s or 0.0) * 1e9 * k.nic_efficiency
        remote = (self.gpus - 1) / self.gpus
        nodes = self.nodes
        if nodes == 1:
            t = tokens * moe.active_experts * copy * remote / nvlink
        elif not prefill:
            t = tokens * moe.active_experts * copy * remote / nic
        else:
            n = k.gpus_per_node
            on_node = moe.active_experts * (n - 1) / self.gpus
            off_nodes = min(nodes, k.node_limit) * (nodes - 1) / nodes
            t = max(tokens * on_node * copy / nvlink, tokens * off_nodes * copy / nic)
        return len(self.model.moe_layers()) * (t + 2 * k.a2a_latency_us * 1e-6)

    def _kernels_s(self, *, tokens: float, seqs: float, ctx: float, prefill: bool) -> float:
        """Dense GEMMs, expert GEMMs and attention for `tokens` tokens of `seqs` sequences,
        each kernel the slower of its memory traffic and its FLOPs."""
        moe, k, bw = self.model.moe, self.knobs, self._bw()
        assert moe is not None
        dense = max(self.dense_bytes / bw, 2 * self.dense_params * tokens / self._gemm_flops())
        routed = tokens * k.eplb_imbalance  # the busiest GPU sets the pace
        touched = 1 - (1 - moe.active_experts / moe.routed_experts) ** max(routed * self.gpus, 1)
        experts = max(
            self.expert_bytes_per_gpu * touched / bw,
            2 * self.expert_params_per_token * routed / self._gemm_flops(),
        )
        kv_read = 0.0 if prefill else seqs * ctx * self.kv_bytes_per_token
        attention = max(
            kv_read / bw, self._attn_flops_of(tokens, ctx, prefill) / self._attn_flops()
        )
        return dense + experts + attention

    def _attn_flops_of(self, tokens: float, ctx: float, prefill: bool) -> float:
        m = self.model
        a = m.mla
        assert a is not None
        if prefill:  # full heads, causal: a token attends to half its prompt on average
            width = m.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim)
            return m.num_layers * tokens * ctx * width  # = 2 x width x tokens x ctx / 2
        # absorbed MLA: every query token reads its sequence's latent cache
        width = 2 * m.num_heads * (2 * a.kv_lora_rank + a.qk_rope_head_dim)
        return m.num_layers * tokens * ctx * width

    def prompt_in_step_s(self, isl: int) -> tuple[float, float]:
        """What one prompt of `isl` tokens, prefilled by one DP rank inside a decode step (chunked
        prefill, aggregated serving), adds to the step: (its rank's own part: dense GEMMs,
        attention and all-to-all, which the other ranks wait on at every MoE layer; its expert
        GEMMs on one GPU, which spread over the group's GPUs). FLOPs only: the decode step
        already reads the weights."""
        flops = self._gemm_flops()
        own = 2 * self.dense_params * isl / flops
        own += self._attn_flops_of(isl, isl, True) / self._attn_flops()
        own += self._a2a_s(isl, prefill=True)
        experts = 2 * self.expert_params_per_token * isl * self.knobs.eplb_imbalance / flops
        return own, experts

    def mixed_step_s(
        self, *, batch: float, ctx: float, accept: float, isl: int, osl: float
    ) -> float:
        """The mean step of aggregated serving: `batch` sequences per GPU decoding while the
        prompts of those that replace the finished ones are prefilled in the same steps. A
        rank finishes batch x tokens-per-step / osl requests a step and prefills as many new
        prompts; they land on the ranks independently (Poisson), and since every MoE layer
        synchronizes the group, a step waits on the rank with the most prompts. Their expert
        GEMMs spread evenly. One rank (EP1) is plain chunked prefill: its own prompts only."""
        prompts = batch * self.tokens_per_step(accept) / osl
        own, experts = self.prompt_in_step_s(isl)
        decode = self.step_s(batch=batch, ctx=ctx, accept=accept)
        return decode + busiest_rank(prompts, self.gpus) * own + prompts * experts

    def step_s(self, *, batch: float, ctx: float, accept: float = 0.0) -> float:
        """One decode step of `batch` sequences per GPU at mean context `ctx`. With MTP
        (`accept` > 0: the draft token's acceptance rate) each sequence also verifies one draft
        token in the step and the MTP layer drafts the next."""
        mtp = accept > 0
        tokens = batch * (2 if mtp else 1)
        kernels = self._kernels_s(tokens=tokens, seqs=batch, ctx=ctx, prefill=False)
        if mtp:  # the MTP module is one more layer (attention and MoE) drafting the next token
            kernels *= 1 + self.model.mtp_layers / self.model.num_layers
        comm = self._a2a_s(tokens, prefill=False)
        return _overlapped(kernels, comm, self.knobs.overlap) + self.knobs.t_fixed_ms / 1e3

    @staticmethod
    def tokens_per_step(accept: float) -> float:
        """Tokens a sequence gains per step: one, plus the draft when it is accepted."""
        return 1 + accept

    def prefill_tokens_per_s(self, isl: int, *, batch_tokens: int | None = None) -> float:
        """Prompt tokens per second one GPU computes in batches of `batch_tokens` (default
        scale.yaml's prefill_tokens_per_gpu, at least one prompt)."""
        tokens = max(isl, batch_tokens or self.knobs.prefill_tokens_per_gpu)
        kernels = self._kernels_s(tokens=tokens, seqs=tokens / isl, ctx=isl, prefill=True)
        comm = self._a2a_s(tokens, prefill=True)
        step = _overlapped(kernels, comm, self.knobs.overlap) + self.knobs.t_fixed_ms / 1e3
        return tokens / step

    def kv_transfer_s(self, isl: int) -> float:
        """A prompt's latent cache from its prefill GPU to its decode GPU over the NIC."""
        nic = (self.gpu.nic_gb_s or self.gpu.link_gb_s) * 1e9 * self.knobs.nic_efficiency
        return isl * self.kv_bytes_per_token / nic


def busiest_rank(mean: float, ranks: int) -> float:
    """The expected largest of `ranks` independent Poisson(`mean`) counts:
    sum over k of P(max > k) = 1 - F(k)^ranks."""
    if mean <= 0:
        return 0.0
    total, cdf = 0.0, 0.0
    for n in range(int(mean + 12 * math.sqrt(mean) + 12)):
        cdf += math.exp(n * math.log(mean) - mean - math.lgamma(n + 1))
        tail = 1 - min(cdf, 1.0) ** ranks
        total += tail
        if n > mean and tail < 1e-12:
            break
    return total


def _overlapped(kernels: float, comm: float, overlap: float) -> float:
    """Two-batch overlap hides up to `overlap` of the all-to-all behind the other micro-batch's
    kernels (and no more than those kernels take)."""
    return kernels + comm - min(overlap * comm, kernels)


_SUMS: dict[tuple[Model, str], tuple[dict[str, int], dict[str, int]]] = {}


def _sums(catalog: Catalog, model: Model, q: Quant) -> tuple[dict[str, int], dict[str, int]]:
    """(bytes, parameters) per tensor group, computed once per model and quantization: a search
    builds thousands of groups."""
    key = (model, q.id)
    if key not in _SUMS:
        w = weights(model, q, catalog)
        _SUMS[key] = (w.bytes_by_group(), w.params_by_group())
    return _SUMS[key]


def group(catalog: Catalog, *, model: Model, quant: str, gpu: str, gpus: int) -> Group:
    """The EP group of `gpus` GPUs for `model` in `quant` (safetensors checkpoints only)."""
    q, g, k = catalog.quant(quant), catalog.gpu(gpu), load_knobs()
    if q.is_gguf:
        raise PlanError(
            f"expert parallelism serves safetensors checkpoints, not GGUF {q.id!r}", field="quant"
        )
    by_bytes, by_params = _sums(catalog, model, q)
    moe = model.moe
    share = moe.active_experts / moe.routed_experts if moe else 0.0
    engine = catalog.engine("vllm")  # the latent cache layout of the GPU engines
    return Group(
        model=model,
        quant=q,
        gpu=g,
        gpus=gpus,
        knobs=k,
        dense_bytes=sum(by_bytes.get(n, 0) for n in DENSE_GROUPS),
        expert_bytes=by_bytes.get("experts", 0),
        dense_params=sum(by_params.get(n, 0) for n in DENSE_GROUPS),
        expert_params_per_token=by_params.get("experts", 0) * share,
        kv_bytes_per_token=kv_bytes_per_token(model, engine, dtype_bytes=k.kv_dtype_bytes),
        mem_eta=engine.decode[g.memory_class].eta,
    )
