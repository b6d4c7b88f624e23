"""The search: fixed scenarios ranked by price, filtered by quality, every rejection explained."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from gateway.planner.capacity import HOURS_PER_MONTH, Workload
from gateway.planner.catalog import load_catalog
from gateway.planner.errors import PlanError
from gateway.planner.prices import Price, catalog_price, owned_usd_per_hour, prices_from_dict
from gateway.planner.quality import load_quality
from gateway.planner.search import REJECTIONS, SearchSpace, combinations, search
from gateway.planner.search_report import render_search_text, search_dict

CATALOG = load_catalog()
QUALITY = load_quality()
WL = Workload(prompt_tokens=512, output_tokens=256, target_qps=20, ttft_slo_s=2, tpot_slo_s=0.05)
THREE = ("l40s", "a100-80gb-sxm", "h100-sxm")


def run(model: str = "deepseek-r1-distill-qwen-7b", **space: object) -> object:
    prices = space.pop("prices", None)
    return search(
        CATALOG,
        model=CATALOG.model(model),
        workload=WL,
        space=SearchSpace(**space),  # type: ignore[arg-type]
        prices=prices,  # type: ignore[arg-type]
    )


def first_rank(result: object, gpu: str) -> int:
    return next(r for r, o in result.cheapest_per_gpu() if o.plan.request.gpu.id == gpu)  # type: ignore[attr-defined]


def test_options_are_ranked_by_monthly_cost() -> None:
    r = run(gpus=THREE, quants=("awq", "fp8", "int8"))
    costs = [o.monthly_usd for o in r.options]
    assert costs == sorted(costs) and len(costs) > 10
    for o in r.options:
        assert o.monthly_usd == pytest.approx(o.plan.gpus * o.price.usd_per_hour * HOURS_PER_MONTH)
        assert o.capacity_qps >= WL.target_qps * (1 + WL.headroom) - 1e-6
        assert o.plan.ttft_s <= WL.ttft_slo_s and o.plan.tpot_s <= WL.tpot_slo_s


@pytest.mark.parametrize("gpu", THREE)
def test_doubling_a_gpus_price_moves_it_down(gpu: str) -> None:
    space = dict(gpus=THREE, quants=("awq", "fp8", "int8"))
    before = run(**space)
    base = catalog_price(CATALOG.gpu(gpu))
    assert base is not None
    doubled = Price(usd_per_hour=2 * base.usd_per_hour, basis="on-demand", source="test")
    after = run(**space, prices={gpu: doubled})
    assert first_rank(after, gpu) > first_rank(before, gpu)
    cheapest = {o.plan.request.gpu.id: o for _, o in before.cheapest_per_gpu()}[gpu]
    again = {o.plan.request.gpu.id: o for _, o in after.cheapest_per_gpu()}[gpu]
    assert again.monthly_usd == pytest.approx(2 * cheapest.monthly_usd)


def test_the_cheapest_gpu_wins_when_another_gets_cheap() -> None:
    """An H100 at a tenth of its price becomes the cheapest fleet."""
    cheap = Price(usd_per_hour=0.349, basis="spot", source="test")
    r = run(gpus=THREE, quants=("awq", "fp8", "int8"), prices={"h100-sxm": cheap})
    assert r.options[0].plan.request.gpu.id == "h100-sxm"
    assert r.options[0].price.basis == "spot"


@pytest.mark.parametrize(
    ("floor", "kept", "removed"),
    [
        ("reference", {"fp16", "f16-gguf"}, {"q8_0", "fp8", "awq", "q4_k_m"}),
        ("near-lossless", {"q8_0", "q6_k", "fp8", "int8"}, {"q5_k_m", "q4_k_m", "awq", "gptq"}),
        ("good", {"q5_k_m", "q4_k_m", "q4_k_s", "iq4_xs", "awq"}, {"q4_0", "q3_k_m", "q2_k"}),
        ("fair", {"q4_0", "q3_k_l", "q3_k_m"}, {"q3_k_s", "q2_k", "iq2_xxs", "iq1_s"}),
    ],
)
def test_the_quality_floor_removes_what_it_should(
    floor: str, kept: set[str], removed: set[str]
) -> None:
    r = run(gpus=("h100-sxm",), min_quality=floor)
    floor_rank = QUALITY.rank(floor)
    for o in r.options:
        assert QUALITY.rank(o.quality.tier) <= floor_rank
    below = {x.quant for x in r.rejected if x.kind == "quality"}
    assert below == {q for q in CATALOG.quants if QUALITY.rank(QUALITY.of(q).tier) > floor_rank}
    assert removed <= below
    assert not kept & below
    considered = {o.plan.request.quant.id for o in r.options} | {
        x.quant for x in r.rejected if x.kind != "quality"
    }
    assert kept <= considered


@pytest.mark.parametrize("model", ["deepseek-r1-distill-qwen-7b", "deepseek-v3"])
def test_every_rejection_has_one_reason(model: str) -> None:
    r = run(model)
    assert r.combinations == len(list(combinations(CATALOG, SearchSpace())))
    assert r.rejected
    for x in r.rejected:
        assert x.kind in REJECTIONS
        assert x.line.startswith(REJECTIONS[x.kind] + ": ") and len(x.reason) > 10
    keys = [(x.gpu, x.quant, x.engine, x.gpus_per_replica) for x in r.rejected]
    keys += [
        (o.plan.request.gpu.id, o.plan.request.quant.id, o.plan.request.engine.id, o.plan.fit.gpus)
        for o in r.options
    ]
    assert len(keys) == len(set(keys)) == r.combinations


@pytest.mark.parametrize(
    ("model", "gpu", "quant", "n", "kind", "words"),
    [
        ("deepseek-r1-distill-qwen-7b", "h100-sxm", "awq", 8, "no_fit", "does not divide 28"),
        ("deepseek-v3", "l40s", "fp8", 1, "no_fit", "exceed 1 x"),
        ("deepseek-r1-distill-qwen-32b", "l40s", "fp8", 1, "slo", "above the 50 ms SLO"),
        ("deepseek-r1-distill-qwen-7b", "rtx-3060-12gb", "awq", 1, "no_price", "--prices"),
    ],
)
def test_rejection_reasons(model: str, gpu: str, quant: str, n: int, kind: str, words: str) -> None:
    r = run(model, gpus=(gpu,), quants=(quant,), gpus_per_replica=n)
    assert not r.options
    [x] = r.rejected
    assert (x.kind, x.gpus_per_replica) == (kind, n)
    assert words in x.reason


def test_a_price_makes_an_unpriced_card_an_option() -> None:
    owned = Price(usd_per_hour=0.1, basis="owned", source="test")
    r = run(gpus=("rtx-3060-12gb",), quants=("awq",), prices={"rtx-3060-12gb": owned})
    assert r.options and r.options[0].price.basis == "owned"


def test_filters_limit_the_space() -> None:
    r = run(gpus=("a100",), engines=("vllm",), max_gpus_per_replica=2)
    for o in r.options:
        req = o.plan.request
        assert (req.gpu.id, req.engine.id) == ("a100-80gb-sxm", "vllm") and o.plan.fit.gpus <= 2
    assert {x.gpus_per_replica for x in r.rejected} <= {1, 2}


@pytest.mark.parametrize(
    ("space", "field"),
    [
        ({"gpus": ("no-such-gpu",)}, "gpus"),
        ({"quants": ("q9_k",)}, "quants"),
        ({"engines": ("tgi",)}, "engines"),
        ({"min_quality": "superb"}, "min_quality"),
    ],
)
def test_bad_filters_name_their_field(space: dict, field: str) -> None:
    with pytest.raises(PlanError) as e:
        run(**space)
    assert e.value.field == field


def test_report_shows_the_table_the_cheapest_per_gpu_and_rejections() -> None:
    r = run(gpus=THREE, quants=("awq", "q4_k_m"))
    text = render_search_text(search_dict(r))
    for heading in ("Ranked by monthly cost", "Cheapest per GPU type", "Rejected", "quality"):
        assert heading in text
    assert text.count("\n  ") >= len(r.rejected)


# --- quality data ------------------------------------------------------------------------------


def test_every_quantization_has_a_quality_entry() -> None:
    assert set(CATALOG.quants) <= set(QUALITY.quants)


@pytest.mark.parametrize(
    ("quant", "tier", "kld"),
    [  # llama.cpp tools/perplexity/README.md, LLaMA 3 8b Scoreboard, no imatrix
        ("q8_0", "near-lossless", 0.001355),
        ("q6_k", "near-lossless", 0.005452),
        ("q4_k_m", "good", 0.031273),
        ("q3_k_m", "fair", 0.101913),
        ("q2_k", "poor", 0.445132),
        ("fp16", "reference", 0.0),
    ],
)
def test_measured_tiers(quant: str, tier: str, kld: float) -> None:
    q = QUALITY.of(quant)
    assert (q.tier, q.kld, q.measured) == (tier, kld, True)


@pytest.mark.parametrize("quant", ["fp8", "int8", "awq", "gptq"])
def test_unmeasured_quants_say_so(quant: str) -> None:
    q = QUALITY.of(quant)
    assert not q.measured and q.kld is None and "no published" in q.note
    assert q.label.endswith("(not measured)")


def test_tiers_follow_kld() -> None:
    measured = sorted((q for q in QUALITY.quants.values() if q.measured), key=lambda q: q.kld)
    ranks = [QUALITY.rank(q.tier) for q in measured]
    assert ranks == sorted(ranks)


# --- prices ------------------------------------------------------------------------------------


def test_owned_cards_are_amortized_plus_power() -> None:
    hourly = owned_usd_per_hour(purchase_usd=26280, years=3, watts=500, usd_per_kwh=0.2, pue=1.5)
    assert hourly == pytest.approx(1.0 + 0.15)


def test_prices_file_resolves_aliases_and_defaults_the_basis() -> None:
    p = prices_from_dict(
        {
            "gpus": {
                "a100": {"usd_per_hour": 1.2},
                "h100": {"usd_per_hour": 1.9, "basis": "spot", "source": "broker"},
                "4090": {"purchase_usd": 1752, "years": 2, "watts": 0, "usd_per_kwh": 0},
            }
        },
        CATALOG,
    )
    assert p["a100-80gb-sxm"] == Price(usd_per_hour=1.2, basis="on-demand", source="prices file")
    assert p["h100-sxm"].basis == "spot"
    assert p["rtx-4090"].basis == "owned" and math.isclose(p["rtx-4090"].usd_per_hour, 0.1)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ([], "one key, `gpus`"),
        ({"gpu": {}}, "one key, `gpus`"),
        ({"gpus": {"nope": {"usd_per_hour": 1}}}, "`gpus.nope`"),
        ({"gpus": {"a100": 3}}, "`gpus.a100` must be a mapping"),
        ({"gpus": {"a100": {}}}, "`gpus.a100.usd_per_hour` is required"),
        ({"gpus": {"a100": {"usd_per_hour": -1}}}, "`gpus.a100.usd_per_hour` must be a number > 0"),
        ({"gpus": {"a100": {"usd_per_hour": "1$"}}}, "`gpus.a100.usd_per_hour`"),
        ({"gpus": {"a100": {"usd_per_hour": 1, "basis": "free"}}}, "`gpus.a100.basis`"),
        ({"gpus": {"a100": {"usd_per_hour": 1, "years": 3}}}, "`gpus.a100.years` is not a field"),
        (
            {"gpus": {"h100": {"purchase_usd": 25000, "years": 0, "watts": 700, "usd_per_kwh": 1}}},
            "`gpus.h100.years` must be a number > 0",
        ),
        (
            {"gpus": {"h100": {"purchase_usd": 25000, "years": 3, "usd_per_kwh": 0.1}}},
            "`gpus.h100.watts` is required",
        ),
        (
            {
                "gpus": {
                    "h100": {
                        "purchase_usd": 1,
                        "years": 3,
                        "watts": 700,
                        "usd_per_kwh": 0.1,
                        "pue": 0.5,
                    }
                }
            },
            "`gpus.h100.pue` must be a number >= 1",
        ),
    ],
)
def test_prices_file_errors_name_the_field(raw: object, words: str) -> None:
    with pytest.raises(PlanError) as e:
        prices_from_dict(raw, CATALOG)
    assert words in str(e.value) and e.value.field == "prices"


def test_seeds_doc_has_the_75_qps_comparison() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs/seeds.md").read_text(encoding="utf-8")
    assert "## Seed 002 revisited: which fleet is cheapest for 75 QPS" in text
    for fleet, usd in (("6 x a100-80gb-sxm", "13,200"), ("4 x h100-sxm", "30,758")):
        assert re.search(rf"\| {fleet} \| \${usd}/month \| \$[0-9,]+/month \| .*QPS per card", text)
    assert re.search(r"R1-Distill-Qwen-32B: at the seed's prices on A100/H100, \d+ x \S+", text)
