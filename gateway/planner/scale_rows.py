"""Published per-node DeepSeek serving figures (data/scale_reference.csv) and the scale model's
prediction of each, run with the same layout, lengths and batch."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.planner.catalog import Catalog, data_csv
from gateway.planner.scale import Group, ScaleKnobs, group, load_knobs


@dataclass(frozen=True, kw_only=True)
class ScaleRow:
    id: str
    role: str  # prefill | decode | aggregated
    model: str  # a catalog id (DeepSeek-V3 and R1 share one architecture)
    gpu: str
    quant: str
    ep: int
    isl: int
    osl: int | None
    batch: int  # prefill: tokens per GPU per batch; decode and aggregated: sequences per GPU
    ctx: int | None
    accept: float
    balanced: bool  # routing perfectly balanced (a profile), not EPLB's residual imbalance
    measured: float  # tokens/s per node: input for prefill, output otherwise
    split: str  # fit | held_out | production (a service's daily average, not a saturated run)
    setting: str
    source: str


def read_scale_rows() -> list[ScaleRow]:
    """scale_reference.csv's published figures, then scale_silicon.csv's measured runs (written
    by `make serving-data`)."""
    records = data_csv("scale_reference.csv") + data_csv("scale_silicon.csv")
    return [
        ScaleRow(
            id=r["id"],
            role=r["role"],
            model=r["model"],
            gpu=r["gpu"],
            quant=r["quant"],
            ep=int(r["ep"]),
            isl=int(r["isl"]),
            osl=int(r["osl"]) if r["osl"] else None,
            batch=int(r["batch"]),
            ctx=int(r["ctx"]) if r["ctx"] else None,
            accept=float(r["accept"]),
            balanced=r["balanced"] == "true",
            measured=float(r["measured_per_node"]),
            split=r["split"],
            setting=r["setting"],
            source=r["source"],
        )
        for r in records
    ]


def _group(catalog: Catalog, row: ScaleRow, knobs: ScaleKnobs | None) -> Group:
    k = knobs or load_knobs()
    if row.balanced:
        k = replace(k, eplb_imbalance=1.0)
    return replace(
        group(catalog, model=catalog.model(row.model), quant=row.quant, gpu=row.gpu, gpus=row.ep),
        knobs=k,
    )


def aggregated_steps(catalog: Catalog, row: ScaleRow) -> tuple[float, float, float]:
    """An aggregated row's (measured TPOT, the model's decode step with no prompts in it, the
    model's mixed step), in seconds: where the measured TPOT is below the step with no
    prompts, no prompt-mixing term can explain the gap."""
    g = _group(catalog, row, None)
    n = min(row.ep, g.knobs.gpus_per_node)
    measured = row.batch * g.tokens_per_step(row.accept) * n / row.measured
    decode = g.step_s(batch=row.batch, ctx=_mean_ctx(row), accept=row.accept)
    return measured, decode, _mixed_step(g, row)


def _mean_ctx(row: ScaleRow) -> float:
    """An aggregated row's mean context in its decode steps: the prompt and half the answer."""
    assert row.role == "aggregated" and row.osl is not None
    return row.isl + row.osl / 2


def _mixed_step(g: Group, row: ScaleRow) -> float:
    """An aggregated row's mean step, closed loop: each finished request's place is taken by a
    new prompt, prefilled inside the decode steps."""
    assert row.osl is not None
    return g.mixed_step_s(
        batch=row.batch, ctx=_mean_ctx(row), accept=row.accept, isl=row.isl, osl=row.osl
    )


def predict_row(catalog: Catalog, row: ScaleRow, *, knobs: ScaleKnobs | None = None) -> float:
    """The row's tokens/s per node as the model runs it: the same layout, lengths and batch."""
    g = _group(catalog, row, knobs)
    k = g.knobs
    n = min(row.ep, k.gpus_per_node)
    if row.role == "prefill":
        return g.prefill_tokens_per_s(row.isl, batch_tokens=row.batch) * n
    if row.role == "decode":
        assert row.ctx is not None
        step = g.step_s(batch=row.batch, ctx=row.ctx, accept=row.accept)
        return row.batch * g.tokens_per_step(row.accept) / step * n
    return row.batch * g.tokens_per_step(row.accept) / _mixed_step(g, row) * n
