"""Published llama-batched-bench rows (llamacpp_batched.csv: B sequences decoding at once on
llama.cpp) and the step model's prediction of each row's aggregate decode speed S_TG."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any

from gateway.planner.accuracy import NotInCatalog, catalog_gpu, catalog_model, catalog_quant
from gateway.planner.capacity import Workload
from gateway.planner.catalog import Catalog, data_csv
from gateway.planner.plan import PlanRequest, laid_out
from gateway.planner.speed import SpeedModel

# The step model's llama.cpp constants (engines.yaml) are not refitted to these rows: both the
# `fit` and the `held_out` split are currently reported, not fitted.
SPLITS = ("fit", "held_out")


@dataclass(frozen=True, kw_only=True)
class BatchedRow:
    model: str
    quant: str  # GGUF type as the source names it (F16, Q4_0, Q4_K_M)
    gpu: str  # as the source names it, "2x RTX 4090" for several
    pp: int  # prompt tokens of each sequence
    tg: int  # tokens each sequence generates
    batch: int  # B: sequences decoding at once
    s_tg_tps: float  # B * TG / T_TG
    s_pp_tps: float
    flags: str
    split: str  # fit | held_out
    source: str


@dataclass(frozen=True, kw_only=True)
class BatchedPrediction:
    row: BatchedRow
    s_tg_tps: float | None = None
    note: str = ""  # why a row is not modelled

    @property
    def error(self) -> float | None:
        """Signed relative error of S_TG: > 0 means the model predicts more than was measured."""
        if self.s_tg_tps is None:
            return None
        return (self.s_tg_tps - self.row.s_tg_tps) / self.row.s_tg_tps


@dataclass(frozen=True, kw_only=True)
class BatchedSummary:
    split: str  # fit | held_out | all
    n: int  # rows modelled
    not_modelled: int
    median: float | None  # of |error|
    max: float | None
    bias: float | None  # median signed error


def read_batched_rows(text: str | None = None) -> list[BatchedRow]:
    """Rows of llamacpp_batched.csv (the copy bundled with the planner unless `text` is given)."""
    return [
        BatchedRow(
            model=r["model"],
            quant=r["quant"],
            gpu=r["gpu"],
            pp=int(r["pp"]),
            tg=int(r["tg"]),
            batch=int(r["batch"]),
            s_tg_tps=float(r["s_tg_tps"]),
            s_pp_tps=float(r["s_pp_tps"]),
            flags=r["flags"],
            split=r["split"],
            source=r["source"],
        )
        for r in data_csv("llamacpp_batched.csv", text)
    ]


def speed_for(catalog: Catalog, row: BatchedRow) -> SpeedModel | str:
    """The row's replica on llama.cpp as the planner lays it out, or why it cannot be modelled."""
    found: list[Any] = []
    missing: list[str] = []
    for find in (
        lambda: catalog_model(catalog, row.model),
        lambda: catalog_quant(catalog, row.quant, gguf=True),
        lambda: catalog_gpu(catalog, row.gpu),
    ):
        try:
            found.append(find())
        except NotInCatalog as e:
            missing.append(e.what)
    if missing:
        return "not in the catalog: " + "; ".join(missing)
    model, quant, (gpu, count) = found
    wl = Workload(
        prompt_tokens=row.pp, output_tokens=row.tg, target_qps=1, ttft_slo_s=1, tpot_slo_s=1
    )
    req = PlanRequest(
        model=model,
        quant=quant,
        gpu=gpu,
        engine=catalog.engine("llama.cpp"),
        workload=wl,
        gpus_per_replica=count,
        max_num_seqs=row.batch,
        gpu_layers=_ngl(row.flags),
    )
    fit, speed = laid_out(req, catalog)
    return f"does not fit in the planner: {fit.reason}" if speed is None else speed


def predict_s_tg(speed: SpeedModel, row: BatchedRow) -> float:
    """Aggregate decode tokens/s of B sequences, each after its own PP-token prompt.

    llama-batched-bench decodes all B sequences in every step, TG steps in all, so
    S_TG = B / t_step(B) at the mean context PP + TG/2.
    """
    return row.batch / speed.decode_step_s(batch=row.batch, ctx=row.pp + row.tg / 2)


def predict_all(catalog: Catalog, rows: list[BatchedRow] | None = None) -> list[BatchedPrediction]:
    out = []
    for row in rows if rows is not None else read_batched_rows():
        speed = speed_for(catalog, row)
        if isinstance(speed, str):
            out.append(BatchedPrediction(row=row, note=speed))
        else:
            out.append(BatchedPrediction(row=row, s_tg_tps=predict_s_tg(speed, row)))
    return out


def summary(preds: list[BatchedPrediction]) -> list[BatchedSummary]:
    """|error| of S_TG per split, then over all rows."""
    return [_summarise(split, [p for p in preds if p.row.split == split]) for split in SPLITS] + [
        _summarise("all", preds)
    ]


def worst(preds: list[BatchedPrediction], n: int = 5) -> list[BatchedPrediction]:
    """The `n` modelled rows with the largest |error|."""
    modelled = [p for p in preds if p.error is not None]
    return sorted(modelled, key=lambda p: -abs(p.error or 0.0))[:n]


def _summarise(split: str, preds: list[BatchedPrediction]) -> BatchedSummary:
    errs = [e for p in preds if (e := p.error) is not None]
    return BatchedSummary(
        split=split,
        n=len(errs),
        not_modelled=len(preds) - len(errs),
        median=statistics.median(abs(e) for e in errs) if errs else None,
        max=max(abs(e) for e in errs) if errs else None,
        bias=statistics.median(errs) if errs else None,
    )


def _ngl(flags: str) -> int | None:
    m = re.search(r"(?:-ngl|ngl)\s+(\d+)", flags)
    return int(m.group(1)) if m else None
