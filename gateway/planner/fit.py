"""Memory fit: where a replica's weights and KV cache go (GPU, TP, llama.cpp offload)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.planner.catalog import Engine, Gpu, Model
from gateway.planner.kvcache import kv_bytes_per_token_per_gpu
from gateway.planner.speed import Placement
from gateway.planner.weights import Weights

GIB = 2**30


@dataclass(frozen=True, kw_only=True)
class FitInput:
    model: Model
    weights: Weights
    gpu: Gpu
    engine: Engine
    context: int  # tokens one sequence may hold (prompt + output)
    kv_dtype_bytes: float
    mla_layout: str = "latent"
    gpus_per_replica: int | None = None  # force a degree; None lets the planner choose
    gpu_layers: int | None = None  # force llama.cpp -ngl (partial offload)
    max_gpus_per_replica: int | None = None
    host_bandwidth_gb_s: float = 100.0
    cpu_ram_gib: float | None = None  # None: report the need, do not limit
    # vLLM's limits as the request sets them; None: the engine's
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None


@dataclass(frozen=True, kw_only=True)
class Fit:
    kind: str  # gpu | tensor_parallel | partial_offload | moe_offload | none
    tp: int = 1
    pp: int = 1
    gpu_layers: int | None = None
    n_cpu_moe: int | None = None
    weights_gpu_bytes: float = 0.0  # whole replica
    weights_cpu_bytes: float = 0.0
    kv_bytes_per_token_gpu: float = 0.0
    kv_budget_bytes_per_gpu: float = 0.0
    reserve_bytes_per_gpu: float = 0.0
    placement: Placement | None = None
    reason: str = ""
    nearest: list[str] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def ok(self) -> bool:
        return self.kind != "none"

    @property
    def kv_tokens(self) -> int:
        """Tokens of KV cache the replica can hold at once."""
        if not self.kv_bytes_per_token_gpu:
            return 0
        return int(self.kv_budget_bytes_per_gpu / self.kv_bytes_per_token_gpu)

    def gpu_gib_per_gpu(self, *, kv_tokens: int | None = None) -> float:
        """GPU memory each card uses: all of the KV budget (vLLM pre-allocates it) or only
        `kv_tokens` worth of cache (llama.cpp allocates its context up front)."""
        kv = (
            self.kv_budget_bytes_per_gpu
            if kv_tokens is None
            else min(kv_tokens * self.kv_bytes_per_token_gpu, self.kv_budget_bytes_per_gpu)
        )
        return (self.weights_gpu_bytes / self.gpus + kv + self.reserve_bytes_per_gpu) / GIB

    @property
    def cpu_ram_gib(self) -> float:
        return self.weights_cpu_bytes / GIB


def fit_options(inp: FitInput) -> list[Fit]:
    """Every placement that fits, cheapest in GPUs first; or one `none` fit with the reason."""
    if inp.engine.multi_gpu == "tensor_parallel":
        fits = [f for f in (_tp_fit(inp, tp, pp) for tp, pp in _tp_degrees(inp)) if f.ok]
        return fits or [
            _no_fit(
                "weights plus the KV cache of one full-context sequence exceed "
                f"{_max_gpus(inp)} x {inp.gpu.name}",
            )
        ]
    return _llamacpp_fits(inp)


def _max_gpus(inp: FitInput) -> int:
    return inp.gpus_per_replica or inp.max_gpus_per_replica or inp.engine.max_gpus_per_replica


def _tp_degrees(inp: FitInput) -> list[tuple[int, int]]:
    if inp.gpus_per_replica:
        n, node = inp.gpus_per_replica, inp.engine.gpus_per_node
        return [(n, 1)] if n <= node else [(node, -(-n // node))]
    out = [(tp, 1) for tp in (1, 2, 4, 8) if tp <= _max_gpus(inp)]
    out += [(8, pp) for pp in (2, 3, 4) if 8 * pp <= _max_gpus(inp)]
    return [(tp, pp) for tp, pp in out if not tp_problem(inp.model, tp)]


def tp_problem(m: Model, tp: int) -> str:
    """Why vLLM refuses tensor parallel `tp` for the model ("" when it does not): the attention
    heads must divide evenly, and the KV heads either divide or are replicated evenly."""
    if m.num_heads % tp:
        return f"{m.num_heads} attention heads do not divide by {tp}"
    kv = m.num_kv_heads
    if (kv % tp if kv >= tp else tp % kv) and not m.mla:
        return f"{kv} KV heads neither divide by {tp} nor replicate evenly over it"
    return ""


def tp_degrees(m: Model, e: Engine) -> list[int]:
    """GPUs per replica vLLM accepts for the model: TP within a node, TP x PP beyond it."""
    node = e.gpus_per_node
    within = [n for n in range(1, node + 1) if not tp_problem(m, n)]
    beyond = range(2 * node, e.max_gpus_per_replica + 1, node) if node in within else []
    return [*within, *beyond]


def _tp_fit(inp: FitInput, tp: int, pp: int) -> Fit:
    m, g, e = inp.model, inp.gpu, inp.engine
    n = tp * pp
    embd = inp.weights.bytes_by_group().get("embd", 0)
    total = inp.weights.total_bytes
    reserve = e.runtime_reserve_gib * GIB + _activation_bytes(inp, tp)
    share = inp.gpu_memory_utilization or e.gpu_memory_utilization
    budget = g.memory_gib * GIB * share - reserve - total / n
    kv_tok = kv_bytes_per_token_per_gpu(
        m, e, tp=tp, pp=pp, dtype_bytes=inp.kv_dtype_bytes, mla_layout=inp.mla_layout
    )
    kind = "gpu" if n == 1 else "tensor_parallel"
    placement = Placement(
        tp=tp,
        pp=pp,
        gpu_dense_bytes=total - embd - _experts(inp.weights),
        gpu_expert_bytes=_experts(inp.weights),
    )
    fit = Fit(
        kind=kind,
        tp=tp,
        pp=pp,
        weights_gpu_bytes=total,
        kv_bytes_per_token_gpu=kv_tok,
        kv_budget_bytes_per_gpu=max(budget, 0.0),
        reserve_bytes_per_gpu=reserve,
        placement=placement,
    )
    if fit.kv_tokens < inp.context:
        return Fit(kind="none", tp=tp, pp=pp, reason="no room for one full-context sequence")
    return fit


def _activation_bytes(inp: FitInput, tp: int) -> float:
    """vLLM's profiled peak: one max-size prefill chunk's activations plus the sampler's logits."""
    m, e = inp.model, inp.engine
    ffn = max(
        m.intermediate_size, m.moe.expert_intermediate_size * m.moe.active_experts if m.moe else 0
    )
    tokens = inp.max_num_batched_tokens or e.max_num_batched_tokens
    chunk = tokens * (4 * m.hidden_size + 2 * ffn / tp) * 2
    logits = (inp.max_num_seqs or e.max_num_seqs) * m.vocab_size * 4
    return chunk + logits


def _experts(w: Weights) -> float:
    return float(w.bytes_by_group().get("experts", 0))


# --- llama.cpp ----------------------------------------------------------------------------------


def _llamacpp_budget(inp: FitInput) -> float:
    """Bytes per GPU left for weights and KV after the CUDA context, compute buffer and margin."""
    m, e = inp.model, inp.engine
    compute_buffer = 512 * (4 * m.vocab_size + 32 * m.hidden_size)  # n_ubatch 512, logits + graph
    return inp.gpu.memory_gib * GIB - (e.runtime_reserve_gib + e.margin_gib) * GIB - compute_buffer


def _llamacpp_fits(inp: FitInput) -> list[Fit]:
    m, e, w = inp.model, inp.engine, inp.weights
    budget = _llamacpp_budget(inp)
    embd = w.bytes_by_group().get("embd", 0)
    on_gpu = w.total_bytes - embd  # token_embd always stays in host memory
    kv_tok_total = kv_bytes_per_token_per_gpu(
        m, e, tp=1, dtype_bytes=inp.kv_dtype_bytes, mla_layout=inp.mla_layout
    )
    need_kv = kv_tok_total * inp.context
    counts = [inp.gpus_per_replica] if inp.gpus_per_replica else range(1, _max_gpus(inp) + 1)
    if inp.gpu_layers is not None and inp.gpu_layers <= m.num_layers:
        counts = []
    for n in counts:
        if on_gpu + need_kv <= n * budget:
            kind = "gpu" if n == 1 else "tensor_parallel"
            placement = Placement(
                pp=n,
                gpu_dense_bytes=on_gpu - _experts(w),
                gpu_expert_bytes=_experts(w),
                host_bandwidth_gb_s=inp.host_bandwidth_gb_s,
            )
            return [
                Fit(
                    kind=kind,
                    pp=n,
                    gpu_layers=m.num_layers + 1,
                    weights_gpu_bytes=on_gpu,
                    weights_cpu_bytes=embd,
                    kv_bytes_per_token_gpu=kv_tok_total / n,
                    kv_budget_bytes_per_gpu=budget - on_gpu / n,
                    reserve_bytes_per_gpu=inp.gpu.memory_gib * GIB - budget,
                    placement=placement,
                )
            ]
    n = inp.gpus_per_replica or 1
    fit = _moe_offload(inp, n, budget * n, need_kv) if m.moe and inp.gpu_layers is None else None
    fit = fit or _layer_offload(inp, n, budget * n, need_kv)
    if fit.ok and inp.cpu_ram_gib is not None and fit.cpu_ram_gib > inp.cpu_ram_gib:
        return [
            _no_fit(
                f"offload needs {fit.cpu_ram_gib:.0f} GiB of host RAM, "
                f"more than the {inp.cpu_ram_gib:.0f} GiB given",
            )
        ]
    return [fit]


def _moe_offload(inp: FitInput, n: int, budget: float, need_kv: float) -> Fit | None:
    """`-ngl 999 --n-cpu-moe N`: everything but the routed experts of layers < N on the GPUs."""
    m, w = inp.model, inp.weights
    embd = w.bytes_by_group().get("embd", 0)
    experts = [w.layer_bytes(i, groups=("experts",)) for i in range(m.num_layers)]
    base = w.total_bytes - embd - sum(experts) + need_kv
    if base > budget:
        return None
    n_cpu = m.num_layers
    while n_cpu > 0 and base + sum(experts[n_cpu - 1 :]) <= budget:
        n_cpu -= 1
    cpu_experts = sum(experts[:n_cpu])
    gpu_experts = sum(experts[n_cpu:])
    dense = w.total_bytes - embd - sum(experts)
    placement = Placement(
        pp=n,
        gpu_dense_bytes=dense,
        gpu_expert_bytes=gpu_experts,
        cpu_expert_bytes=cpu_experts,
        host_bandwidth_gb_s=inp.host_bandwidth_gb_s,
    )
    kind = "moe_offload" if n_cpu else "gpu"
    on_gpu = dense + gpu_experts
    return Fit(
        kind=kind,
        pp=n,
        gpu_layers=m.num_layers + 1,
        n_cpu_moe=n_cpu,
        weights_gpu_bytes=on_gpu,
        weights_cpu_bytes=embd + cpu_experts,
        kv_bytes_per_token_gpu=need_kv / inp.context / n,
        kv_budget_bytes_per_gpu=(budget - on_gpu) / n,
        reserve_bytes_per_gpu=inp.gpu.memory_gib * GIB - budget / n,
        placement=placement,
    )


def _layer_offload(inp: FitInput, n: int, budget: float, need_kv: float) -> Fit:
    """`-ngl K`: the last K layers on the GPUs (the output layer only when K > n_layer)."""
    m, w = inp.model, inp.weights
    embd = w.bytes_by_group().get("embd", 0)
    kv_layer = need_kv / m.num_layers
    used, ngl = 0.0, 0
    for i in reversed(range(m.num_layers)):
        step = w.layer_bytes(i) + kv_layer
        if used + step > budget or ngl == inp.gpu_layers:
            break
        used, ngl = used + step, ngl + 1
    if ngl == 0:
        return _no_fit(
            f"not even one layer ({w.layer_bytes(m.num_layers - 1) / GIB:.2f} GiB) "
            f"plus its KV cache fits in {inp.gpu.name}",
        )
    gpu_layers = range(m.num_layers - ngl, m.num_layers)
    gpu_w = sum(w.layer_bytes(i) for i in gpu_layers)
    cpu_w = w.total_bytes - gpu_w  # includes output.weight and token_embd
    gpu_exp = sum(w.layer_bytes(i, groups=("experts",)) for i in gpu_layers)
    cpu_exp = _experts(w) - gpu_exp
    placement = Placement(
        pp=n,
        gpu_dense_bytes=gpu_w - gpu_exp,
        gpu_expert_bytes=gpu_exp,
        cpu_dense_bytes=cpu_w - embd - cpu_exp,
        cpu_expert_bytes=cpu_exp,
        host_bandwidth_gb_s=inp.host_bandwidth_gb_s,
    )
    return Fit(
        kind="partial_offload",
        pp=n,
        gpu_layers=ngl,
        weights_gpu_bytes=gpu_w,
        weights_cpu_bytes=cpu_w,
        kv_bytes_per_token_gpu=need_kv / inp.context / n,
        kv_budget_bytes_per_gpu=(budget - gpu_w) / n,
        reserve_bytes_per_gpu=inp.gpu.memory_gib * GIB - budget / n,
        placement=placement,
    )


def _no_fit(reason: str) -> Fit:
    return Fit(kind="none", reason=reason)
