"""The profiled estimator: a decode step and a prefill timed from measured kernel tables instead of
the roofline. aiconfigurator-core (Apache-2.0) ships, per GPU and engine version, the latency of
every GEMM shape, of decode and prefill attention, and of the engine's all-reduce, measured on the
silicon; a step is the sum of its kernels plus the engine's own costs per step and per sequence
(fitted like the roofline's, `Engine.profiled`).

The tables are data read from the installed package (`pip install 'cardinal[profiled]'`), loaded on
first use and never at import time. Covered: dense GQA models (Llama, Qwen) on vLLM, in 16-bit or
FP8 weights, on the GPUs the package has vLLM tables for. Anything else says why it is not.
"""

from __future__ import annotations

import bisect
import functools
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.planner.errors import PlanError
from gateway.planner.speed import SpeedModel

# catalog GPU id -> aiconfigurator-core system directory
TABLE_GPUS = {
    "h100-sxm": "h100_sxm",
    "h200": "h200_sxm",
    "b200": "b200_sxm",
    "l40s": "l40s",
    "a100-80gb-sxm": "a100_sxm",
}
GEMM_DTYPES = {"fp16": "bfloat16", "bf16": "bfloat16", "fp8": "fp8"}  # catalog quant -> table


def profiled(speed: SpeedModel, *, kv_dtype: str = "auto") -> ProfiledSpeed:
    """The same replica timed from kernel tables, or NotProfiled saying what has none."""
    m = speed.model
    if speed.engine.id != "vllm":
        raise NotProfiled(f"kernel tables are vLLM's; {speed.engine.name} has none")
    if m.moe is not None or m.mla is not None:
        raise NotProfiled(f"{m.name}: only dense GQA models are profiled (MoE and MLA are not)")
    if speed.quant.id not in GEMM_DTYPES:
        raise NotProfiled(f"no GEMM tables for {speed.quant.name} weights")
    if speed.gpu.id not in TABLE_GPUS:
        raise NotProfiled(f"aiconfigurator-core has no vLLM tables for {speed.gpu.name}")
    if speed.placement.pp > 1:
        raise NotProfiled("pipeline parallelism is not profiled")
    fields = {f: getattr(speed, f) for f in speed.__dataclass_fields__}
    out = ProfiledSpeed(
        **fields,
        system=TABLE_GPUS[speed.gpu.id],
        kv_cache_dtype="fp8" if kv_dtype == "fp8" else "bfloat16",
    )
    tables = out._tables
    for key in (out._attn_key(decode=True),):
        if key not in tables.decode_attn:
            raise NotProfiled(f"no decode-attention table for heads/kv heads/dim {key}")
    if out._attn_key(decode=False) not in tables.prefill_attn:
        raise NotProfiled(f"no prefill-attention table for {out._attn_key(decode=False)}")
    if GEMM_DTYPES[speed.quant.id] not in tables.gemm:
        raise NotProfiled(f"no {speed.quant.name} GEMM table on {speed.gpu.name}")
    return out


class NotProfiled(PlanError):
    """No kernel tables for this model, quantization, GPU or engine."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="estimator")


def installed() -> bool:
    """Whether aiconfigurator-core's tables can be read here."""
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec("aiconfigurator_core") is not None


def tables_root() -> Path:
    try:
        import aiconfigurator_core  # noqa: PLC0415 - optional data, loaded on demand
    except ImportError:
        raise NotProfiled(
            "the profiled estimator reads aiconfigurator-core's kernel tables: "
            "pip install 'cardinal[profiled]'"
        ) from None
    return Path(aiconfigurator_core.__file__).parent / "systems" / "data"


def _latest(path: Path) -> Path:
    """The newest engine version's directory under `path`."""
    versions = [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
    if not versions:
        raise NotProfiled(f"no kernel tables under {path.parent.name}/{path.name}")

    def key(p: Path) -> tuple[int, ...]:
        return tuple(int(x) if x.isdigit() else 0 for x in p.name.replace("rc", ".").split("."))

    return max(versions, key=key)


def _rows(path: Path, columns: list[str]) -> list[dict]:
    import pyarrow.parquet as pq  # noqa: PLC0415 - comes with aiconfigurator-core

    return pq.read_table(path, columns=columns).to_pylist()


def _column(values: Iterable[float]) -> array:
    # arrays, not lists of floats: the tables stay out of the garbage collector's way in a
    # process that also serves (a full collection would walk every point)
    return array("d", values)


def _curve(points: list[tuple[float, float]]) -> tuple[array, array]:
    points = sorted(points)
    return _column(x for x, _ in points), _column(y for _, y in points)


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear in x; past the last point, proportional to x (the kernel is saturated)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1] * x / xs[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _bracket(grid: Sequence[float], v: float) -> tuple[int, int, float]:
    """Grid points around v and v's weight on the upper one (clamped to the grid)."""
    if v <= grid[0]:
        return grid[0], grid[0], 0.0
    if v >= grid[-1]:
        return grid[-1], grid[-1], 0.0
    i = bisect.bisect_right(grid, v)
    lo, hi = grid[i - 1], grid[i]
    return lo, hi, (v - lo) / (hi - lo)


@dataclass
class KernelTables:
    """One GPU's vLLM kernel latencies, in seconds."""

    system: str
    gemm: dict[str, dict[tuple[int, int], tuple[array, array]]]
    decode_attn: dict[tuple, dict[int, tuple[array, array]]]
    prefill_attn: dict[tuple, tuple[array, array]]
    allreduce: dict[int, tuple[array, array]]

    def gemm_s(self, dtype: str, m: float, n: float, k: float) -> float:
        """An m x k by k x n GEMM: linear in m on the measured points, bilinear in (n, k) between
        the measured shapes, proportional to n x k beyond them."""
        table = self.gemm[dtype]
        ns = sorted({nk[0] for nk in table})
        ks = sorted({nk[1] for nk in table})
        n0, n1, wn = _bracket(ns, n)
        k0, k1, wk = _bracket(ks, k)
        total = 0.0
        for nn, kk, w in (
            (n0, k0, (1 - wn) * (1 - wk)),
            (n1, k0, wn * (1 - wk)),
            (n0, k1, (1 - wn) * wk),
            (n1, k1, wn * wk),
        ):
            if w == 0.0:
                continue
            xs, ys = table[(nn, kk)]
            total += w * _interp(xs, ys, m)
        corner = (n0 + (n1 - n0) * wn) * (k0 + (k1 - k0) * wk)
        return total * (n * k / corner)

    def decode_attn_s(self, key: tuple, batch: float, ctx: float) -> float:
        """Decode attention of `batch` sequences at context `ctx`: linear in context on each
        measured batch size, then linear between the batch sizes around `batch`."""
        by_batch = self.decode_attn[key]
        bs = sorted(by_batch)
        b0, b1, wb = _bracket(bs, batch)
        lo = _interp(*by_batch[b0], ctx)
        hi = _interp(*by_batch[b1], ctx)
        return ((1 - wb) * lo + wb * hi) * max(batch / bs[-1], 1.0)

    def prefill_attn_s(self, key: tuple, tokens: float) -> float:
        xs, ys = self.prefill_attn[key]
        if tokens > xs[-1]:
            return ys[-1] * (tokens / xs[-1]) ** 2  # causal attention is quadratic
        return _interp(xs, ys, tokens)

    def allreduce_s(self, tp: int, nbytes: float) -> float:
        if tp == 1:
            return 0.0
        if tp not in self.allreduce:
            raise NotProfiled(f"no all-reduce table for {tp} GPUs on {self.system}")
        xs, ys = self.allreduce[tp]
        return _interp(xs, ys, nbytes)


@functools.cache
def load_tables(system: str) -> KernelTables:
    root = tables_root() / system
    if not root.is_dir():
        raise NotProfiled(f"aiconfigurator-core has no tables for {system}")
    gemm: dict[str, dict] = {}
    points: dict[tuple[str, int, int], list[tuple[int, float]]] = {}
    path = _latest(root / "gemm" / "vllm") / "gemm_perf.parquet"
    for r in _rows(path, ["gemm_dtype", "m", "n", "k", "latency"]):
        points.setdefault((r["gemm_dtype"], r["n"], r["k"]), []).append((r["m"], r["latency"]))
    for (dtype, n, k), pts in points.items():
        pts.sort()
        gemm.setdefault(dtype, {})[(n, k)] = (
            _column(m for m, _ in pts),
            _column(lat / 1e3 for _, lat in pts),
        )

    attn_dir = _latest(root / "attention" / "vllm")
    dec: dict[tuple, dict[tuple[int, int], float]] = {}
    cols = ["kernel_source", "batch_size", "num_heads", "num_key_value_heads", "head_dim"]
    for r in _rows(
        attn_dir / "generation_attention_perf.parquet",
        [*cols, "kv_cache_dtype", "step", "window_size", "latency"],
    ):
        if r["window_size"] or r["kernel_source"].endswith("fa4"):
            continue
        key = (r["num_heads"], r["num_key_value_heads"], r["head_dim"], r["kv_cache_dtype"])
        dec.setdefault(key, {})[(r["batch_size"], r["step"] + 1)] = r["latency"] / 1e3
    decode_attn: dict[tuple, dict[int, tuple[array, array]]] = {}
    for key, lat in dec.items():
        by_batch: dict[int, list[tuple[int, float]]] = {}
        for (b, c), v in lat.items():
            by_batch.setdefault(b, []).append((c, v))
        decode_attn[key] = {b: _curve(v) for b, v in by_batch.items()}
    pre: dict[tuple, list[tuple[int, float]]] = {}
    for r in _rows(
        attn_dir / "context_attention_perf.parquet",
        [*cols, "isl", "kv_cache_dtype", "window_size", "latency"],
    ):
        if r["batch_size"] != 1 or r["window_size"] or r["kv_cache_dtype"] != "bfloat16":
            continue
        key = (r["num_heads"], r["num_key_value_heads"], r["head_dim"])
        pre.setdefault(key, []).append((r["isl"], r["latency"] / 1e3))
    prefill_attn = {k: _curve(v) for k, v in pre.items()}

    ar: dict[int, list[tuple[int, float]]] = {}
    ar_path = _latest(root / "comm" / "vllm") / "custom_allreduce_perf.parquet"
    for r in _rows(ar_path, ["num_gpus", "message_size", "latency", "backend"]):
        if r["backend"] == "vllm_graph":  # decode runs in CUDA graphs
            ar.setdefault(r["num_gpus"], []).append((r["message_size"], r["latency"] / 1e3))
    allreduce = {g: _curve(v) for g, v in ar.items()}
    return KernelTables(
        system=system,
        gemm=gemm,
        decode_attn=decode_attn,
        prefill_attn=prefill_attn,
        allreduce=allreduce,
    )


@dataclass(frozen=True, kw_only=True)
class ProfiledSpeed(SpeedModel):
    """A SpeedModel whose step and prefill are sums of measured kernels (see the module doc)."""

    system: str
    kv_cache_dtype: str = "bfloat16"  # as the attention table names it: bfloat16 | fp8

    @property
    def _tables(self) -> KernelTables:
        return load_tables(self.system)

    def decode_step_s(self, *, batch: float, ctx: float) -> float:
        m, p, t = self.model, self.placement, self._tables
        b = max(batch, 1.0)
        layer = sum(self._gemm(b, n, k) for n, k in self._layer_shapes())
        layer += t.decode_attn_s(self._attn_key(decode=True), b, ctx)
        layer += 2 * t.allreduce_s(p.tp, b * m.hidden_size * 2)
        knobs = self.engine.profiled
        return (
            m.num_layers * layer
            + self._gemm(b, m.vocab_size / p.tp, m.hidden_size)
            + knobs.t_fixed_ms / 1e3
            + b * knobs.t_seq_us / 1e6
        )

    def prefill_s(self, tokens: int) -> float:
        m, p, t = self.model, self.placement, self._tables
        chunk = self.max_num_batched_tokens or self.engine.max_num_batched_tokens
        total = 0.0
        done = 0
        while done < tokens:  # chunked prefill: each chunk is its own forward pass
            n = min(chunk, tokens - done)
            layer = sum(self._gemm(n, nn, k) for nn, k in self._layer_shapes())
            layer += 2 * t.allreduce_s(p.tp, n * m.hidden_size * 2)
            total += m.num_layers * layer + self._gemm(1, m.vocab_size / p.tp, m.hidden_size)
            done += n
        attn = t.prefill_attn_s(self._attn_key(decode=False), tokens)
        return total + m.num_layers * attn + self.engine.profiled.t_fixed_ms / 1e3

    def _gemm(self, m: float, n: float, k: float) -> float:
        return self._tables.gemm_s(GEMM_DTYPES[self.quant.id], m, n, k)

    def _layer_shapes(self) -> list[tuple[float, float]]:
        """(n, k) of the four GEMMs of a layer on one GPU: QKV, output, gate-up, down."""
        m, tp = self.model, self.placement.tp
        q = m.num_heads * m.head_dim
        kv = 2 * max(1, m.num_kv_heads // tp) * m.head_dim * min(tp, m.num_kv_heads)
        return [
            ((q + kv) / tp, m.hidden_size),
            (m.hidden_size, q / tp),
            (2 * m.intermediate_size / tp, m.hidden_size),
            (m.hidden_size, m.intermediate_size / tp),
        ]

    def _attn_key(self, *, decode: bool) -> tuple:
        m, tp = self.model, self.placement.tp
        key = (m.num_heads // tp, max(1, m.num_kv_heads // tp), m.head_dim)
        if not decode:
            return key
        return (*key, self.kv_cache_dtype)
