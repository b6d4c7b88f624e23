"""Fit the TP engine's step-model constants to measured serving points (the `fit` split of
serving.csv) and batch-1 decode figures (reference.csv), by coordinate search in log space."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.planner.accuracy import NotModelled, SpeedCase, read_rows, speed_case
from gateway.planner.catalog import Catalog, DecodeKnobs, Engine
from gateway.planner.scale import ScaleKnobs, load_knobs
from gateway.planner.scale_rows import predict_row, read_scale_rows
from gateway.planner.serving import (
    ServingRow,
    Setup,
    closed_loop_throughput,
    predict,
    read_serving_rows,
    setup,
)

MEMORY_CLASS = "hbm"  # the measured points are all HBM GPUs (H100, H200, B200)

# name -> (read, write) over an Engine; every constant is positive and searched in log space
Knob = tuple[Callable[[Engine], float], Callable[[Engine, float], Engine]]


def _decode(field: str) -> Knob:
    def get(e: Engine) -> float:
        return getattr(e.decode[MEMORY_CLASS], field)

    def put(e: Engine, v: float) -> Engine:
        knobs: DecodeKnobs = replace(e.decode[MEMORY_CLASS], **{field: v})
        return replace(e, decode={**e.decode, MEMORY_CLASS: knobs})

    return get, put


def _engine(field: str) -> Knob:
    return (lambda e: getattr(e, field)), (lambda e, v: replace(e, **{field: v}))


def _prefill_eta() -> Knob:
    return (
        lambda e: e.prefill_eta[MEMORY_CLASS],
        lambda e, v: replace(e, prefill_eta={**e.prefill_eta, MEMORY_CLASS: min(v, 0.95)}),
    )


DENSE_KNOBS: dict[str, Knob] = {
    "decode.hbm.eta": _decode("eta"),
    "decode.hbm.t_fixed_ms": _decode("t_fixed_ms"),
    "decode.hbm.t_seq_us": _decode("t_seq_us"),
    "prefill_eta.hbm": _prefill_eta(),
    "decode.hbm.allreduce_latency_us": _decode("allreduce_latency_us"),
}
# Not fitted: the GEMM-efficiency curve (decode.hbm.gemm_half_tokens) gives a batch-1 step the
# compute of `gemm_half_tokens` tokens; fitted on 70B FP8 rows it reached 134, which made a 7B on
# A100 (FP16 peak) compute-bound at 11 ms a token, five times its weight reads. It stays 0.
MOE_KNOBS: dict[str, Knob] = {
    "moe_layer_ms": _engine("moe_layer_ms"),
    "moe_token_us": _engine("moe_token_us"),
}
TTFT_KNOBS: dict[str, Knob] = {"request_layer_ms": _engine("request_layer_ms")}


def _profiled(field: str) -> Knob:
    def put(e: Engine, v: float) -> Engine:
        return replace(e, profiled=replace(e.profiled, **{field: v}))

    return (lambda e: getattr(e.profiled, field)), put


PROFILED_KNOBS: dict[str, Knob] = {
    "profiled.t_fixed_ms": _profiled("t_fixed_ms"),
    "profiled.t_seq_us": _profiled("t_seq_us"),
}


# Where the search starts (the long-standing defaults where they exist, a round guess for the new
# constants), so a refit does not depend on the values engines.yaml holds.
START = {
    "decode.hbm.eta": 0.8,
    "decode.hbm.t_fixed_ms": 1.0,
    "decode.hbm.t_seq_us": 10.0,
    "prefill_eta.hbm": 0.55,
    "decode.hbm.allreduce_latency_us": 10.0,
    "moe_layer_ms": 0.45,
    "moe_token_us": 1.0,
    "request_layer_ms": 1.0,
    "profiled.t_fixed_ms": 1.0,
    "profiled.t_seq_us": 10.0,
}


def started(engine: Engine, knobs: dict[str, Knob]) -> Engine:
    for name, (_, put) in knobs.items():
        engine = put(engine, START[name])
    return engine


@dataclass(frozen=True, kw_only=True)
class FitResult:
    engine: Engine
    loss: float
    rows: int
    values: dict[str, float]


def anchors(catalog: Catalog) -> list[SpeedCase]:
    """reference.csv's rows on the TP engine (batch-1 decode and throughput at a concurrency,
    vLLM and NIM), held in the fit so the serving points do not buy their accuracy with them."""
    out = []
    for row in read_rows():
        if row.kind not in ("decode_tps", "throughput"):
            continue
        try:
            case = speed_case(catalog, row)
        except NotModelled:
            continue
        if case.speed.engine.id == "vllm" and not case.check().note:
            out.append(case)
    return out


def loss(
    engine: Engine, cases: list[tuple[Setup, ServingRow]], refs: list[SpeedCase] = ()
) -> float:
    """Mean squared log error of TPOT and of output throughput over the cases, plus that of the
    reference rows weighted as much as a tenth of the cases together (they are few, and the
    only batch-1 and NIM figures the TP engine has)."""
    weight = 0.1 * len(cases) / max(len(refs), 1)
    total = weight * sum(math.log1p(c.error or 0.0) ** 2 for c in (r.check(engine) for r in refs))
    for s, row in cases:
        tpot, ttft = predict(s, row, engine=engine)
        tput = closed_loop_throughput(row, ttft_s=ttft, tpot_s=tpot)
        total += math.log(tpot / row.tpot_s) ** 2 + math.log(tput / row.throughput) ** 2
    return total / max(len(cases), 1)


def ttft_loss(
    engine: Engine, cases: list[tuple[Setup, ServingRow]], refs: list[SpeedCase] = ()
) -> float:
    """Median |log error| of TTFT: robust to the runs whose clients queue for KV before their
    first token, which the steady-state TTFT does not model (a mean would be set by them)."""
    errs = sorted(abs(math.log(predict(s, row, engine=engine)[1] / row.ttft_s)) for s, row in cases)
    return errs[len(errs) // 2] if errs else 0.0


def fit_engine(
    catalog: Catalog,
    rows: list[ServingRow],
    *,
    knobs: dict[str, Knob],
    engine: Engine | None = None,
    sweeps: int = 40,
    objective: Callable[..., float] = loss,
    estimator: str = "roofline",
) -> FitResult:
    """Constants of `knobs` that minimise `loss` on `rows` (the others stay as they are)."""
    cases = [
        (s, r) for r in rows if not isinstance(s := setup(catalog, r, estimator=estimator), str)
    ]
    refs = anchors(catalog) if estimator == "roofline" else []
    best = started(engine or catalog.engine("vllm"), knobs)
    best_loss = objective(best, cases, refs)
    # each constant keeps its own multiplicative step, halved when neither direction helps
    steps = dict.fromkeys(knobs, 1.0)
    for _ in range(sweeps):
        for name, (get, put) in knobs.items():
            moved = False
            for sign in (1, -1):
                cand = put(best, get(best) * math.exp(sign * steps[name]))
                cand_loss = objective(cand, cases, refs)
                if cand_loss < best_loss - 1e-9:
                    best, best_loss, moved = cand, cand_loss, True
                    break
            if not moved:
                steps[name] /= 2
    return FitResult(
        engine=best,
        loss=best_loss,
        rows=len(cases),
        values={name: get(best) for name, (get, _) in knobs.items()},
    )


def fit_tp_engine(catalog: Catalog) -> tuple[FitResult, FitResult, FitResult]:
    """The dense constants on the dense rows of the `fit` split, then the MoE constants on its
    MoE rows over the dense result, then the first-token overhead on the dense rows' TTFT (it
    enters the throughput the dense fit sees, so the three run twice, the second time from the
    first's overhead): what engines.yaml's vllm entry holds."""
    rows = [r for r in read_serving_rows() if r.split == "fit"]
    dense_rows = [r for r in rows if not catalog.model(r.model).moe]
    moe_rows = [r for r in rows if catalog.model(r.model).moe]
    base = started(catalog.engine("vllm"), TTFT_KNOBS)
    for _ in range(2):
        dense = fit_engine(catalog, dense_rows, knobs=DENSE_KNOBS, engine=base)
        moe = fit_engine(catalog, moe_rows, knobs=MOE_KNOBS, engine=dense.engine)
        ttft = fit_engine(
            catalog, dense_rows, knobs=TTFT_KNOBS, engine=moe.engine, objective=ttft_loss
        )
        base = ttft.engine
    return dense, moe, ttft


def fit_profiled(catalog: Catalog) -> FitResult:
    """The profiled estimator's own costs (per step, per sequence) on the dense rows of the `fit`
    split, the kernels being measured: engines.yaml's vllm `profiled` entry."""
    rows = [r for r in read_serving_rows() if r.split == "fit" and not catalog.model(r.model).moe]
    return fit_engine(catalog, rows, knobs=PROFILED_KNOBS, estimator="profiled")


# -- MoE at scale (scale.py): the two knobs scale.yaml marks as fitted --------------------------

SCALE_KNOBS = ("gemm_eta", "overlap", "t_fixed_ms")
_SCALE_GRID = {
    "gemm_eta": [i / 50 for i in range(10, 46)],
    "overlap": [i / 20 for i in range(21)],
    "t_fixed_ms": [i / 4 for i in range(61)],  # 0-15 ms per step
}


@dataclass(frozen=True, kw_only=True)
class ScaleFit:
    loss: float
    rows: int
    values: dict[str, float]


def fit_scale(catalog: Catalog) -> ScaleFit:
    """gemm_eta, overlap and t_fixed_ms fitted to the `fit` rows of the scale data: SGLang's
    published per-node prefill and decode rates on 96 H100s (which pin the GEMM share and the
    overlap) and the measured H200 decode workers of scale_silicon.csv (which pin the step's fixed
    cost the large batches leave free). Least squares on log errors over fixed grids: the GEMM
    share and overlap together, then the fixed cost, in turn until neither moves, starting
    from the grids' first values, so a refit does not depend on what scale.yaml holds."""
    rows = [r for r in read_scale_rows() if r.split == "fit"]

    def loss(k: ScaleKnobs) -> float:
        return sum(math.log(predict_row(catalog, r, knobs=k) / r.measured) ** 2 for r in rows)

    k = replace(load_knobs(), **{name: grid[0] for name, grid in _SCALE_GRID.items()})
    pairs = [(g, o) for g in _SCALE_GRID["gemm_eta"] for o in _SCALE_GRID["overlap"]]
    for _ in range(10):
        previous = k
        g, o = min(pairs, key=lambda p: loss(replace(k, gemm_eta=p[0], overlap=p[1])))
        k = replace(k, gemm_eta=g, overlap=o)
        t = min(_SCALE_GRID["t_fixed_ms"], key=lambda t: loss(replace(k, t_fixed_ms=t)))
        k = replace(k, t_fixed_ms=t)
        if k == previous:
            break
    values = {name: getattr(k, name) for name in SCALE_KNOBS}
    return ScaleFit(values=values, loss=loss(k), rows=len(rows))
