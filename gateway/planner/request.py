"""A plan request: the model, quantization, GPU, engine, workload and engine knobs a plan is made
for, and the checks that refuse a combination no engine can run (each naming its field)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.planner.capacity import Workload, slot_tokens
from gateway.planner.catalog import Catalog, Engine, Gpu, Model, Quant
from gateway.planner.errors import PlanError
from gateway.planner.fit import tp_degrees, tp_problem

KV_DTYPES = {
    "auto": 2.0,
    "f16": 2.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
}
# The KV cache types each engine takes: vLLM's --kv-cache-dtype, llama.cpp's -ctk/-ctv.
ENGINE_KV_DTYPES = {
    "vllm": ("auto", "f16", "fp16", "bf16", "fp8"),
    "llama.cpp": ("auto", "f16", "fp16", "bf16", "q8_0", "q4_0"),
}
# How a step is timed: the fitted roofline (the default: the more accurate on the held-out
# serving points, docs/accuracy.md) or the sum of measured kernels (profiled.py)
ESTIMATORS = ("roofline", "profiled")
# Knobs only one engine has: field -> (the engine id that has it, what it is).
ENGINE_ONLY = {
    "gpu_layers": ("llama.cpp", "llama.cpp's -ngl; vLLM keeps every layer on the GPU"),
    "max_num_batched_tokens": (
        "vllm",
        "vLLM's chunked-prefill token budget; llama.cpp prefills in -ub micro-batches",
    ),
    "gpu_memory_utilization": (
        "vllm",
        "vLLM's share of GPU memory; llama.cpp allocates what -ngl and -c need",
    ),
}


@dataclass(frozen=True, kw_only=True)
class PlanRequest:
    model: Model
    quant: Quant
    gpu: Gpu
    engine: Engine
    workload: Workload
    kv_dtype: str = "auto"
    mla_cache: str = "latent"
    gpus_per_replica: int | None = None
    max_gpus_per_replica: int | None = None
    max_num_seqs: int | None = None  # vLLM max_num_seqs, llama.cpp's -np cap; None: the engine's
    max_batch: int | None = None  # the same setting under its older name
    max_num_batched_tokens: int | None = None  # vLLM's chunked-prefill budget; None: the engine's
    gpu_memory_utilization: float | None = None  # vLLM's share of GPU memory; None: the engine's
    gpu_price_usd_per_hour: float | None = None
    per_card_qps: float | None = None  # a measured or claimed figure that replaces the model's
    host_bandwidth_gb_s: float = 100.0
    cpu_ram_gib: float | None = None
    ramp_qps: tuple[float, ...] = ()
    api_model: str | None = None
    gpu_layers: int | None = None  # force llama.cpp -ngl (reference rows measured that way)
    estimator: str = "roofline"  # roofline | profiled (kernel tables: gateway/planner/profiled.py)

    @property
    def seqs_cap(self) -> int:
        """The most sequences one replica runs at once: the request's, else the engine's."""
        return self.max_num_seqs or self.max_batch or self.engine.max_num_seqs

    @property
    def batched_tokens(self) -> int:
        """Tokens one vLLM step may schedule: the request's, else the engine's."""
        return self.max_num_batched_tokens or self.engine.max_num_batched_tokens

    @property
    def seq_tokens(self) -> int:
        """KV tokens one request holds: its own on a paged cache (vLLM), a whole slot on llama.cpp
        (prompt + output + the chat template, padded)."""
        context = self.workload.context
        return context if self.engine.multi_gpu == "tensor_parallel" else slot_tokens(context)

    @property
    def memory_utilization(self) -> float:
        return self.gpu_memory_utilization or self.engine.gpu_memory_utilization


def request_for(
    catalog: Catalog,
    *,
    model: str | Model,
    quant: str,
    gpu: str,
    workload: Workload,
    engine: str | None = None,
    **knobs: Any,
) -> PlanRequest:
    """A request from catalog names; the engine defaults to the one serving the quant's format."""
    q = catalog.quant(quant)
    return PlanRequest(
        model=catalog.model(model) if isinstance(model, str) else model,
        quant=q,
        gpu=catalog.gpu(gpu),
        engine=catalog.engine(engine) if engine else catalog.default_engine(q),
        workload=workload,
        **knobs,
    )


def check_request(req: PlanRequest, catalog: Catalog) -> None:
    """Raise PlanError naming the field for combinations no engine can run."""
    wl = req.workload
    if req.estimator not in ESTIMATORS:
        raise PlanError(
            f"`estimator` must be one of {', '.join(ESTIMATORS)}, got {req.estimator!r}",
            field="estimator",
        )
    for name, value in (("prompt_tokens", wl.prompt_tokens), ("output_tokens", wl.output_tokens)):
        if value < 1:
            raise PlanError(f"`{name}` must be >= 1, got {value}", field=name)
    for name, value in (
        ("target_qps", wl.target_qps),
        ("ttft_slo", wl.ttft_slo_s),
        ("tpot_slo", wl.tpot_slo_s),
    ):
        if not value > 0 or math.isinf(value):
            raise PlanError(f"`{name}` must be a positive number, got {value}", field=name)
    if not 0 <= wl.headroom < 10:
        raise PlanError(f"`headroom` must be in [0, 10), got {wl.headroom}", field="headroom")
    if wl.context > req.model.max_context:
        raise PlanError(
            f"prompt + output = {wl.context} tokens exceeds {req.model.name}'s "
            f"{req.model.max_context}-token context",
            field="prompt_tokens",
        )
    if req.quant.format not in req.engine.formats:
        served = "GGUF files" if "gguf" in req.engine.formats else "safetensors checkpoints"
        raise PlanError(
            f"{req.engine.name} serves {served}; quantization {req.quant.id!r} is "
            f"{req.quant.format} (use engine {catalog.default_engine(req.quant).id})",
            field="quant",
        )
    if req.kv_dtype not in KV_DTYPES:
        raise PlanError(f"`kv_dtype` must be one of {', '.join(KV_DTYPES)}", field="kv_dtype")
    for name, value in (
        ("per_card_qps", req.per_card_qps),
        ("gpu_price", req.gpu_price_usd_per_hour),
        ("gpus_per_replica", req.gpus_per_replica),
        ("max_num_seqs", req.max_num_seqs),
        ("max_batch", req.max_batch),
        ("max_num_batched_tokens", req.max_num_batched_tokens),
        ("gpu_layers", req.gpu_layers),
    ):
        if value is not None and not value > 0:
            raise PlanError(f"`{name}` must be > 0, got {value}", field=name)
    if req.max_num_seqs and req.max_batch and req.max_num_seqs != req.max_batch:
        raise PlanError(
            f"`max_batch` is another name for `max_num_seqs`: {req.max_batch} != "
            f"{req.max_num_seqs}",
            field="max_num_seqs",
        )
    u = req.gpu_memory_utilization
    if u is not None and not 0 < u <= 1:
        raise PlanError(
            f"`gpu_memory_utilization` must be in (0, 1], got {u}", field="gpu_memory_utilization"
        )
    check_engine_knobs(req.engine, req)


def check_engine_knobs(engine: Engine, req: PlanRequest) -> None:
    """Raise PlanError naming the field for a knob `engine` does not have."""
    kinds = ENGINE_KV_DTYPES.get(engine.id)
    if kinds is not None and req.kv_dtype not in kinds:
        flag = "-ctk/-ctv" if engine.id == "llama.cpp" else "--kv-cache-dtype"
        takes = ", ".join(k for k in kinds if k not in ("auto", "fp16"))
        raise PlanError(
            f"{_short(engine)}'s KV cache ({flag}) takes {takes}, not {req.kv_dtype!r}",
            field="kv_dtype",
        )
    for name, (owner, what) in ENGINE_ONLY.items():
        if getattr(req, name) is not None and engine.id != owner:
            raise PlanError(f"`{name}` is {what}", field=name)


def _short(engine: Engine) -> str:
    return engine.name.split(" (")[0]


def check_parallel(req: PlanRequest) -> None:
    """A forced --gpus-per-replica vLLM would refuse (heads not divisible) is an error."""
    n = req.gpus_per_replica
    if not n or req.engine.multi_gpu != "tensor_parallel":
        return
    tp = min(n, req.engine.gpus_per_node)
    problem = tp_problem(req.model, tp)
    if problem:
        valid = ", ".join(str(d) for d in tp_degrees(req.model, req.engine))
        raise PlanError(
            f"{req.engine.name} refuses tensor parallel {tp} for {req.model.name}: {problem} "
            f"(it takes --gpus-per-replica {valid})",
            field="gpus_per_replica",
        )
