"""GPU prices: the catalog's dated defaults, or a prices file (rented or owned) that overrides them.

A prices file is YAML with one entry per GPU under `gpus` (catalog ids or aliases):

    gpus:
      a100-80gb-sxm: {usd_per_hour: 1.20, basis: spot, source: "our broker, 2026-10"}
      h100-sxm:      {usd_per_hour: 2.10}                 # basis defaults to on-demand
      rtx-4090:                                           # owned: amortized plus power
        basis: owned
        purchase_usd: 1800       # per card, with its share of the host
        years: 3                 # written off over
        watts: 450               # average draw per card
        usd_per_kwh: 0.15
        pue: 1.3                 # optional, cooling and power overhead (default 1.0)

Owned cards cost `purchase_usd / (years x 8760 h) + watts / 1000 x pue x usd_per_kwh` per hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.planner.catalog import Catalog, Gpu
from gateway.planner.errors import PlanError

HOURS_PER_YEAR = 8760.0
RENTED = ("on-demand", "spot", "reserved")
BASES = (*RENTED, "owned")
_RENTED_FIELDS = {"usd_per_hour", "basis", "source"}
_OWNED_FIELDS = {"basis", "source", "purchase_usd", "years", "watts", "usd_per_kwh", "pue"}


@dataclass(frozen=True, kw_only=True)
class Price:
    usd_per_hour: float
    basis: str  # catalog | on-demand | spot | reserved | owned
    source: str = ""


def catalog_price(gpu: Gpu) -> Price | None:
    """The catalog's sourced, dated on-demand price, or None where it has none."""
    if gpu.price_usd_per_hour is None:
        return None
    return Price(usd_per_hour=gpu.price_usd_per_hour, basis="catalog", source=gpu.price_source)


def owned_usd_per_hour(
    *, purchase_usd: float, years: float, watts: float, usd_per_kwh: float, pue: float = 1.0
) -> float:
    """Hourly cost of an owned card: straight-line amortization plus its electricity."""
    return purchase_usd / (years * HOURS_PER_YEAR) + watts / 1000 * pue * usd_per_kwh


def prices_from_dict(raw: Any, catalog: Catalog) -> dict[str, Price]:
    """Validate a parsed prices file; errors name the field (`gpus.h100-sxm.years`)."""
    if not isinstance(raw, dict) or set(raw) != {"gpus"} or not isinstance(raw["gpus"], dict):
        raise PlanError("a prices file is a mapping with one key, `gpus`", field="prices")
    out = {}
    for key, entry in raw["gpus"].items():
        where = f"gpus.{key}"
        try:
            gpu = catalog.gpu(str(key))
        except PlanError as e:
            raise PlanError(f"`{where}`: {e}", field="prices") from None
        out[gpu.id] = _price(entry, where)
    return out


def _price(entry: Any, where: str) -> Price:
    if not isinstance(entry, dict):
        raise PlanError(f"`{where}` must be a mapping", field="prices")
    owned = "purchase_usd" in entry
    basis = entry.get("basis", "owned" if owned else "on-demand")
    if basis not in BASES:
        raise PlanError(f"`{where}.basis` must be one of {', '.join(BASES)}", field="prices")
    allowed = _OWNED_FIELDS if basis == "owned" else _RENTED_FIELDS
    for name in entry:
        if name not in allowed:
            raise PlanError(
                f"`{where}.{name}` is not a field of a {basis} price "
                f"({', '.join(sorted(allowed))})",
                field="prices",
            )
    source = str(entry.get("source", "prices file"))
    if basis != "owned":
        return Price(usd_per_hour=_number(entry, where, "usd_per_hour"), basis=basis, source=source)
    hourly = owned_usd_per_hour(
        purchase_usd=_number(entry, where, "purchase_usd"),
        years=_number(entry, where, "years"),
        watts=_number(entry, where, "watts", minimum=0.0),
        usd_per_kwh=_number(entry, where, "usd_per_kwh", minimum=0.0),
        pue=_number(entry, where, "pue", default=1.0, minimum=1.0),
    )
    return Price(usd_per_hour=hourly, basis="owned", source=source)


def _number(
    entry: dict[str, Any],
    where: str,
    name: str,
    *,
    default: float | None = None,
    minimum: float | None = None,
) -> float:
    """A finite number field: > 0, or >= `minimum` when one is given."""
    value = entry.get(name, default)
    if value is None:
        raise PlanError(f"`{where}.{name}` is required", field="prices")
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value >= minimum if minimum is not None else value > 0
    if not ok:
        bound = f">= {minimum:g}" if minimum is not None else "> 0"
        raise PlanError(f"`{where}.{name}` must be a number {bound}, got {value!r}", field="prices")
    return float(value)
