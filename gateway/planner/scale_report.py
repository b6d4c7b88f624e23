"""The at-scale section of a plan: the cheapest EP/DP and PD layouts (scale_fleet.py) beside the
tensor-parallel plan, with the scale model's measured error on published figures it was not
fitted to."""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import replace
from typing import Any

from gateway.planner.capacity import Workload
from gateway.planner.catalog import Catalog, Model, load_catalog
from gateway.planner.errors import PlanError
from gateway.planner.scale import load_knobs
from gateway.planner.scale_fleet import ScaleOption, options
from gateway.planner.scale_rows import predict_row, read_scale_rows

LAYOUTS = ("auto", "tp", "ep", "pd")  # --layout: auto compares all; tp skips the at-scale part
MTP_MODES = ("auto", "on", "off")
SHOWN = 5  # layouts listed beyond the cheapest
_ENGINE_NAMES = {"sglang": "SGLang"}


def applies(model: Model, quant: str, gpu: str, catalog: Catalog) -> bool:
    """Expert parallelism is planned for MoE models in safetensors on HBM GPUs."""
    return (
        model.moe is not None
        and model.mla is not None  # the all-to-all and latent cache are DeepSeek's (scale.py)
        and not catalog.quant(quant).is_gguf
        and catalog.gpu(gpu).memory_class == "hbm"
    )


@functools.cache
def held_out_error() -> tuple[float, int, float, str]:
    """(median |error|, rows, max |error|, worst row id) over the held-out rows (published
    figures and measured runs): what an at-scale plan's uncertainty line reads."""
    catalog = load_catalog()
    rows = [r for r in read_scale_rows() if r.split == "held_out"]
    errs = {r.id: abs(predict_row(catalog, r) / r.measured - 1) for r in rows}
    worst = max(errs, key=lambda k: errs[k])
    return statistics.median(errs.values()), len(errs), errs[worst], worst


def at_scale(
    catalog: Catalog,
    *,
    model: Model,
    quant: str,
    gpu: str,
    workload: Workload,
    layout: str = "auto",
    mtp: str = "auto",
    accept: float | None = None,
    price: float | None = None,
) -> dict[str, Any] | None:
    """The at-scale section of a plan dict; None where it does not apply (dense, GGUF, non-HBM,
    or `--layout tp`)."""
    if layout not in LAYOUTS:
        raise PlanError(f"`layout` must be one of {', '.join(LAYOUTS)}", field="layout")
    if mtp not in MTP_MODES:
        raise PlanError(f"`mtp` must be one of {', '.join(MTP_MODES)}", field="mtp")
    if accept is not None and not 0 < accept <= 1:
        raise PlanError(f"`spec_accept` must be in (0, 1], got {accept}", field="spec_accept")
    if mtp == "on" and not model.mtp_layers:
        raise PlanError(f"{model.name} has no MTP module (num_nextn_predict_layers)", field="mtp")
    if layout == "tp" or not applies(model, quant, gpu, catalog):
        if layout in ("ep", "pd"):
            raise PlanError(
                "expert parallelism is planned for DeepSeek-style MoE models (MLA) in "
                "safetensors on HBM GPUs",
                field="layout",
            )
        return None
    ok, why = options(catalog, model, quant, gpu, workload, mtp=mtp, accept=accept)
    if layout != "auto":
        ok = [o for o in ok if o.kind == layout]
    median, n, worst, worst_id = held_out_error()
    k = load_knobs()
    return {
        "engine": k.engine,
        "layouts": [_with_price(o, price) for o in ok[: SHOWN + 1]],
        "layouts_meeting_slos": len(ok),
        "rejected": why,
        "uncertainty": {
            "median_error": round(median, 4),
            "rows": n,
            "max_error": round(worst, 4),
            "worst_row": worst_id,
            "conservative_gpus": _conservative(ok[0], median) if ok else None,
        },
    }


def _with_price(o: ScaleOption, price: float | None) -> dict[str, Any]:
    """The layout as data, at `price` per GPU-hour where one was given (--gpu-price)."""
    return (o if price is None else replace(o, price_usd_per_hour=price)).as_dict()


def _conservative(o: ScaleOption, error: float) -> int:
    """The GPUs if every group delivered `error` less: each pool scaled up, whole groups."""
    scale = 1 / (1 - error)
    if o.kind == "ep":
        return math.ceil(o.prefill_groups * scale) * o.prefill_gpus
    return (
        math.ceil(o.prefill_groups * scale) * o.prefill_gpus
        + math.ceil(o.decode_groups * scale) * o.decode_gpus
    )


def render_at_scale(d: dict[str, Any] | None, *, tp_gpus: int | None) -> list[str]:
    """The plan report's lines for the at-scale section."""
    if not d:
        return []
    engine = _ENGINE_NAMES.get(d["engine"], d["engine"])
    lines = ["", f"At scale ({engine}: expert parallel, DP attention; planner/scale.py)"]
    if not d["layouts"]:
        lines.append("  no EP or PD layout meets the SLOs:")
        return lines + [f"    {r}" for r in d["rejected"][:6]]
    best, u = d["layouts"][0], d["uncertainty"]
    cost = "no GPU price" if best["monthly_usd"] is None else f"${best['monthly_usd']:,.0f}/month"
    lines += [
        f"  cheapest           {best['layout']}: {best['gpus']} GPUs, {cost}",
        f"                     TTFT {best['ttft_s']:.2f} s, TPOT {best['tpot_s'] * 1e3:.1f} ms, "
        f"{best['batch_per_gpu']} sequences per GPU (limited by {best['batch_limited_by']})",
        f"  per node           {best['output_tokens_per_s_per_node']:,.0f} output tokens/s "
        f"decoding, {best['input_tokens_per_s_per_node']:,.0f} input tokens/s prefilling",
        f"  uncertainty        {best['gpus']} GPUs; {u['conservative_gpus']} if a node delivers "
        f"{u['median_error']:.0%} less, this model's median error on {u['rows']} published "
        f"figures and measured runs it was not fitted to "
        f"(worst {u['max_error']:.0%}: {u['worst_row']})",
    ]
    if tp_gpus:
        lines.append(f"  tensor parallel    {tp_gpus} GPUs (the plan above)")
    for o in d["layouts"][1:]:
        price = "" if o["monthly_usd"] is None else f", ${o['monthly_usd']:,.0f}/month"
        lines.append(f"  also               {o['layout']}: {o['gpus']} GPUs{price}")
    if d["rejected"]:
        lines.append(f"  rejected           {len(d['rejected'])} layouts, e.g. {d['rejected'][0]}")
    return lines
