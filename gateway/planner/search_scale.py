"""The search's at-scale part: for DeepSeek-style MoE models, the cheapest EP/DP, PD and MTP
layouts (scale_fleet.py) of every HBM GPU and safetensors quantization the space allows, ranked
by monthly cost beside the tensor-parallel fleets; every GPU x quantization without one says why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.planner.capacity import HOURS_PER_MONTH, Workload
from gateway.planner.catalog import Catalog, Model
from gateway.planner.prices import Price, catalog_price
from gateway.planner.quality import QualityTable, QuantQuality
from gateway.planner.scale_fleet import ScaleOption, options
from gateway.planner.scale_report import applies


@dataclass(frozen=True, kw_only=True)
class ScaleChoice:
    option: ScaleOption
    price: Price
    quality: QuantQuality

    @property
    def monthly_usd(self) -> float:
        return self.option.gpus * self.price.usd_per_hour * HOURS_PER_MONTH

    def usd_per_million_output_tokens(self, wl: Workload) -> float:
        tokens_per_hour = wl.target_qps * wl.output_tokens * 3600
        return self.option.gpus * self.price.usd_per_hour / tokens_per_hour * 1e6


def scale_search(
    catalog: Catalog,
    *,
    model: Model,
    workload: Workload,
    gpus: list,
    quants: list,
    prices: Mapping[str, Price],
    quality: QualityTable,
    floor: str | None,
) -> tuple[list[ScaleChoice], list[str]]:
    """Every layout meeting the SLOs, cheapest first, and one reason per GPU x quantization that
    has none (empty for models the scale model does not cover)."""
    if model.moe is None or model.mla is None:
        return [], []
    out: list[ScaleChoice] = []
    why: list[str] = []
    for gpu in gpus:
        for quant in quants:
            if quant.is_gguf or not applies(model, quant.id, gpu.id, catalog):
                continue
            q = quality.of(quant.id)
            if not quality.meets(quant.id, floor):
                why.append(f"{gpu.id} {quant.id}: {q.label} is below {floor}")
                continue
            price = prices.get(gpu.id) or catalog_price(gpu)
            ok, rejected = options(catalog, model, quant.id, gpu.id, workload)
            if not ok:
                why.append(f"{gpu.id} {quant.id}: {rejected[0] if rejected else 'no layout'}")
            elif price is None:
                why.append(f"{gpu.id} {quant.id}: no sourced price; give one in a --prices file")
            else:  # the cheapest of each kind (EP/DP, PD): ok is fewest GPUs first
                kinds = {o.kind: o for o in reversed(ok)}
                out += [ScaleChoice(option=o, price=price, quality=q) for o in kinds.values()]
    out.sort(key=lambda c: (c.monthly_usd, c.option.gpus, c.option.ttft_s))
    return out, why
