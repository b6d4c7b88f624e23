"""Output quality per quantization: published KL-divergence and perplexity deltas, and tiers."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from gateway.planner.errors import PlanError


@dataclass(frozen=True, kw_only=True)
class QuantQuality:
    quant: str
    tier: str
    measured: bool  # False: no published figure; `tier` is the format's nominal standing
    kld: float | None = None  # mean KL divergence from FP16, nats per token
    ppl_delta: float | None = None  # Wikitext-2 perplexity increase over FP16
    imatrix: str | None = None
    note: str = ""

    @property
    def label(self) -> str:
        """The tier as shown beside an option: `good (KLD 0.031)` or `good (not measured)`."""
        if not self.measured:
            return f"{self.tier} (not measured)"
        return self.tier if not self.kld else f"{self.tier} (KLD {self.kld:.3g})"


@dataclass(frozen=True)
class QualityTable:
    tiers: tuple[str, ...]  # best first
    quants: dict[str, QuantQuality]
    source: str

    def of(self, quant_id: str) -> QuantQuality:
        try:
            return self.quants[quant_id]
        except KeyError:
            raise PlanError(
                f"no quality entry for quantization {quant_id!r}", field="quant"
            ) from None

    def rank(self, tier: str) -> int:
        """0 for the best tier; larger is worse."""
        if tier not in self.tiers:
            raise PlanError(
                f"unknown quality tier {tier!r}; one of {', '.join(self.tiers)}",
                field="min_quality",
            )
        return self.tiers.index(tier)

    def meets(self, quant_id: str, floor: str | None) -> bool:
        return floor is None or self.rank(self.of(quant_id).tier) <= self.rank(floor)


def tier_for(kld: float, bands: list[tuple[str, float]]) -> str:
    """The first tier whose upper KLD bound holds `kld`."""
    return next(name for name, bound in bands if kld <= bound)


def quality_table(raw: dict[str, Any]) -> QualityTable:
    """A QualityTable from the parsed quality.yaml."""
    bands = [(t["name"], float(t["max_kld"])) for t in raw["tiers"]]
    quants = {}
    for key, e in raw["quants"].items():
        kld = e.get("kld")
        measured = kld is not None and math.isfinite(kld)
        quants[key] = QuantQuality(
            quant=key,
            tier=tier_for(kld, bands) if measured else e["nominal_tier"],
            measured=measured,
            kld=kld,
            ppl_delta=e.get("ppl_delta"),
            imatrix=e.get("imatrix"),
            note=e.get("note", ""),
        )
    return QualityTable(tiers=tuple(n for n, _ in bands), quants=quants, source=raw["source"])


@functools.cache
def load_quality() -> QualityTable:
    """The bundled quality table (read once)."""
    text = resources.files("gateway.planner").joinpath("data", "quality.yaml").read_text("utf-8")
    return quality_table(yaml.safe_load(text))
