"""Seed 002's question answered by the search: the cheapest fleet per GPU type for 75 QPS."""

from __future__ import annotations

from gateway.planner.capacity import HOURS_PER_MONTH, Workload
from gateway.planner.catalog import Catalog
from gateway.planner.prices import Price
from gateway.planner.search import Option, SearchSpace, search

SEED_FLEETS = (
    ("a100-80gb-sxm", 6, 13200.0),
    ("a100-80gb-sxm", 8, 17625.0),
    ("h100-sxm", 4, 30758.0),
)
SEARCH_MODELS = ("deepseek-v3", "deepseek-r1-distill-qwen-32b")


def _seed_prices() -> dict[str, Price]:
    """USD per GPU-hour implied by seed 002's monthly figures (6 x A100, 4 x H100)."""
    return {
        gpu: Price(
            usd_per_hour=usd / (cards * HOURS_PER_MONTH),
            basis="on-demand",
            source=f"seed 002: ${usd:,.0f}/month for {cards} cards",
        )
        for gpu, cards, usd in SEED_FLEETS
        if cards != 8
    }


def _cheapest(
    c: Catalog, model: str, *, gpus: tuple[str, ...], prices: dict[str, Price] | None
) -> list[tuple[int, Option]]:
    """The cheapest option per GPU type with quality `good` or better, 75 QPS as in seed 002."""
    wl = Workload(
        prompt_tokens=512, output_tokens=256, target_qps=75.0, ttft_slo_s=2.0, tpot_slo_s=0.05
    )
    result = search(
        c,
        model=c.model(model),
        workload=wl,
        space=SearchSpace(gpus=gpus, min_quality="good"),
        prices=prices,
    )
    return result.cheapest_per_gpu()


def _fleet_cell(o: Option, cards: int) -> str:
    """What `cards` of this GPU serve with Cardinal's cheapest configuration on it."""
    assert o.plan.replica is not None
    per_replica = o.plan.fit.gpus
    replicas = cards // per_replica
    per_card = o.plan.replica.capacity_qps / per_replica
    if not replicas:
        return (
            f"cannot hold one replica ({per_replica} cards, {o.plan.request.quant.id}); "
            f"{per_card:.2f} QPS per card"
        )
    qps = replicas * o.plan.replica.capacity_qps
    verdict = "serves" if qps >= 75 * 1.2 else "does not serve"
    return (
        f"{per_card:.2f} QPS per card ({o.plan.request.quant.id}, {o.layout.split(' x ', 1)[1]} "
        f"per replica): {qps:.1f} QPS, {verdict} 75 QPS with 20 % headroom"
    )


def seed_75qps_search(c: Catalog) -> list[str]:
    """Seed 002's fleets at its own prices, against what `cardinal plan --search` finds."""
    prices = _seed_prices()
    best = {
        m: {o.plan.request.gpu.id: o for _, o in _cheapest(c, m, gpus=tuple(prices), prices=prices)}
        for m in SEARCH_MODELS
    }
    lines = [
        "## Seed 002 revisited: which fleet is cheapest for 75 QPS",
        "",
        "The seed prices 6 x A100 at $13,200/month, 8 x A100 at $17,625 and 4 x H100 at $30,758: "
        + ", ".join(f"${p.usd_per_hour:.2f}/GPU-hour for {g}" for g, p in prices.items())
        + ". Below, each of its fleets at Cardinal's own per-card capacity (512 prompt + 256 "
        "output tokens, TTFT <= 2 s, TPOT <= 50 ms), using the cheapest configuration "
        "`cardinal plan --search --prices` finds on that card with quality `good` or better.",
        "",
        "| seed fleet | seed's cost | at the seed's rate | "
        + " | ".join(c.model(m).name for m in SEARCH_MODELS)
        + " |",
        "|---|---|---|" + "---|" * len(SEARCH_MODELS),
    ]
    for gpu, cards, usd in SEED_FLEETS:
        rate = prices[gpu].usd_per_hour * cards * HOURS_PER_MONTH
        cells = [_fleet_cell(best[m][gpu], cards) for m in SEARCH_MODELS]
        lines.append(
            f"| {cards} x {gpu} | ${usd:,.0f}/month | ${rate:,.0f}/month | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "What Cardinal recommends instead (rank 1 of the search):", ""]
    for m in SEARCH_MODELS:
        seed_rank = _cheapest(c, m, gpus=tuple(prices), prices=prices)[0][1]
        whole = _cheapest(c, m, gpus=(), prices=None)[0][1]
        whole_catalog = _option_line(whole, prices_note="catalog prices, every GPU")
        lines.append(
            f"- {c.model(m).name}: at the seed's prices on A100/H100, "
            f"{_option_line(seed_rank, prices_note='seed prices')}; over the whole catalog, "
            f"{whole_catalog}."
        )
    a100, h100 = (best["deepseek-r1-distill-qwen-32b"][g] for g in ("a100-80gb-sxm", "h100-sxm"))
    ratio = _per_card(h100) / _per_card(a100)
    lines += [
        f"- The seed's 'H100 only 30 % faster': Cardinal's R1-Distill-Qwen-32B capacity per "
        f"H100 is {ratio:.1f}x that per A100 ({h100.plan.request.quant.id} vs "
        f"{a100.plan.request.quant.id}); at the seed's prices the cheapest H100 fleet costs "
        f"${h100.monthly_usd:,.0f}/month against ${a100.monthly_usd:,.0f} for the cheapest A100 "
        f"fleet ({'H100' if h100.monthly_usd < a100.monthly_usd else 'A100'} is cheaper).",
        "",
    ]
    return lines


def _per_card(o: Option) -> float:
    assert o.plan.replica is not None
    return o.plan.replica.capacity_qps / o.plan.fit.gpus


def _option_line(o: Option, *, prices_note: str) -> str:
    req = o.plan.request
    return (
        f"{o.plan.gpus} x {req.gpu.id} {req.quant.id} with {req.engine.id} ({o.layout}), "
        f"{o.capacity_qps:.1f} QPS, ${o.monthly_usd:,.0f}/month ({prices_note}, "
        f"${o.price.usd_per_hour:.2f}/GPU-hour), quality {o.quality.label}"
    )
