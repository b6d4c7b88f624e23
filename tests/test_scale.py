"""DeepSeek at scale: the EP/DP, PD and MTP model held to published per-node figures (fitted part
and held-out part apart), its fit, its physics, and how `cardinal plan` and `--search` show it."""

from __future__ import annotations

import json
import math
import random
import statistics
from typing import Any

import pytest

from gateway.planner.capacity import Workload
from gateway.planner.catalog import load_catalog
from gateway.planner.fitting import SCALE_KNOBS, fit_scale
from gateway.planner.scale import busiest_rank, group, load_knobs
from gateway.planner.scale_fleet import decode_at_slo, options
from gateway.planner.scale_rows import aggregated_steps, predict_row, read_scale_rows
from gateway.planner.search import SearchSpace, search
from tests.test_cli import cardinal

WL_75 = Workload(
    prompt_tokens=512, output_tokens=256, target_qps=75, ttft_slo_s=2.0, tpot_slo_s=0.05
)


def _errors(split: str) -> dict[str, float]:
    catalog = load_catalog()
    rows = [r for r in read_scale_rows() if r.split == split]
    return {r.id: predict_row(catalog, r) / r.measured - 1 for r in rows}


def test_fitted_rows_within_10_percent() -> None:
    errs = _errors("fit")
    published = {k: e for k, e in errs.items() if not k.startswith("aic-")}
    assert len(published) >= 4 and len(errs) >= 10
    assert all(abs(e) <= 0.10 for e in published.values()), published
    assert statistics.median(abs(e) for e in errs.values()) <= 0.10, errs


def test_held_out_published_figures_within_30_percent_at_the_median() -> None:
    errs = _errors("held_out")
    assert len(errs) >= 4
    assert statistics.median(abs(e) for e in errs.values()) <= 0.30, errs
    # SGLang's simulated-MTP decode and DeepSeek's own profile (prefill and decode), each
    for row in ("lmsys-decode-simmtp", "deepseek-profile-prefill", "deepseek-profile-decode"):
        assert abs(errs[row]) <= 0.30, (row, errs[row])


def test_the_split_keeps_fitted_and_held_out_sources_apart() -> None:
    rows = read_scale_rows()
    fitted = {r.source.split(" (")[0].split(";")[0] for r in rows if r.split == "fit"}
    assert fitted == {
        "https://lmsys.org/blog/2025-05-05-large-scale-ep/",
        "aiconfigurator-core 0.12.0 systems/silicon_sample.csv",
    }
    assert {r.split for r in rows} == {"fit", "held_out", "production"}
    assert all(r.source and r.setting for r in rows)
    # of the measured runs, only H200 decode workers are fitted: B200 and aggregated are held out
    measured = [r for r in rows if r.id.startswith("aic-")]
    assert {(r.gpu, r.role) for r in measured if r.split == "fit"} == {("h200", "decode")}
    held = {(r.gpu, r.role) for r in measured if r.split == "held_out"}
    assert ("b200", "decode") in held and ("h200", "aggregated") in held


def test_scale_yaml_holds_what_the_fit_finds() -> None:
    res = fit_scale(load_catalog())
    k = load_knobs()
    for name in SCALE_KNOBS:
        assert math.isclose(res.values[name], getattr(k, name), abs_tol=0.021), name


def test_more_nodes_hold_fewer_experts_per_gpu_and_leave_more_cache() -> None:
    catalog = load_catalog()
    model = catalog.model("deepseek-v3")
    small, large = (
        group(catalog, model=model, quant="fp8", gpu="h100-sxm", gpus=n) for n in (16, 72)
    )
    assert small.expert_bytes_per_gpu == pytest.approx(large.expert_bytes_per_gpu * 72 / 16)
    assert large.kv_budget_bytes > small.kv_budget_bytes
    # 288 expert slots over 72 GPUs: 4 experts each (DeepSeek's and SGLang's layout)
    assert large.experts_per_gpu == 4


def test_a_step_grows_with_the_batch_and_mtp_adds_tokens() -> None:
    catalog = load_catalog()
    g = group(catalog, model=catalog.model("deepseek-v3"), quant="fp8", gpu="h200", gpus=16)
    steps = [g.step_s(batch=b, ctx=2000) for b in (1, 16, 64, 256)]
    assert steps == sorted(steps) and steps[0] > 0

    def gain(b: int) -> float:
        plain = b / g.step_s(batch=b, ctx=2000)
        return b * g.tokens_per_step(0.85) / g.step_s(batch=b, ctx=2000, accept=0.85) / plain

    # a small batch gains most of the accepted drafts; a large one is near its compute and
    # all-to-all limits, where the drafts cost nearly what they bring (SGLang measured +14 % at
    # 128 requests per rank, LMSYS MTP blog 2025-07-17)
    assert 1.3 < gain(8) < 1.85
    assert 1.0 < gain(128) < gain(8)


@pytest.mark.parametrize(("mean", "ranks"), [(0.06, 8), (0.5, 8), (3.0, 16), (40.0, 72)])
def test_the_busiest_rank_matches_a_sampled_one(mean: float, ranks: int) -> None:
    rng = random.Random(7)

    def poisson() -> int:  # Knuth's method: count uniform draws until their product < e^-mean
        n, p, floor = 0, rng.random(), math.exp(-mean)
        while p > floor:
            n, p = n + 1, p * rng.random()
        return n

    draws = 4000
    sampled = sum(max(poisson() for _ in range(ranks)) for _ in range(draws)) / draws
    assert busiest_rank(mean, ranks) == pytest.approx(sampled, rel=0.04, abs=0.01)
    assert busiest_rank(mean, 1) == pytest.approx(mean)  # one rank waits on its own prompts


def test_a_prompt_holds_the_whole_group_in_aggregated_serving() -> None:
    """The same per-GPU batch and prompts: on one GPU a step carries its own prompts, in a
    group of 8 DP ranks it waits for the busiest one, so it is slower, but never slower than
    every prompt prefilled one after the other."""
    catalog = load_catalog()
    one, eight = (
        group(catalog, model=catalog.model("deepseek-r1"), quant="fp8", gpu="h200", gpus=n)
        for n in (1, 8)
    )
    kw = {"batch": 128, "ctx": 2000, "accept": 0.0, "isl": 1000, "osl": 2000}
    extra = {g.gpus: g.mixed_step_s(**kw) - g.step_s(batch=128, ctx=2000) for g in (one, eight)}
    own, experts = eight.prompt_in_step_s(1000)
    prompts = 128 / 2000
    assert extra[1] == pytest.approx(prompts * sum(one.prompt_in_step_s(1000)))
    assert prompts * (own + experts) < extra[8] < 8 * prompts * own + prompts * experts


def test_an_aggregated_rows_steps_are_its_tpot_and_the_models_two_bounds() -> None:
    """The measured TPOT is the row's own figure turned back into a step; the mixed step is the
    model's prediction of it (the row's predicted rate), never below the step with no prompts."""
    catalog = load_catalog()
    rows = [r for r in read_scale_rows() if r.role == "aggregated"]
    assert rows
    for r in rows:
        measured, decode, mixed = aggregated_steps(catalog, r)
        n = min(r.ep, 8)
        assert measured == pytest.approx(r.batch * n / r.measured)
        assert mixed == pytest.approx(r.batch * n / predict_row(catalog, r))
        assert decode < mixed


def test_decode_batch_meets_the_tpot_slo() -> None:
    catalog = load_catalog()
    g = group(catalog, model=catalog.model("deepseek-v3"), quant="fp8", gpu="h200", gpus=16)
    d = decode_at_slo(g, WL_75, accept=0.0)
    assert not isinstance(d, str)
    assert d.tpot_s <= WL_75.tpot_slo_s
    if d.limited_by == "tpot_slo":
        over = g.step_s(batch=d.batch + 1, ctx=WL_75.mean_decode_context)
        assert over > WL_75.tpot_slo_s


def test_every_rejected_layout_says_why() -> None:
    catalog = load_catalog()
    ok, why = options(catalog, catalog.model("deepseek-v3"), "fp8", "h100-sxm", WL_75)
    assert ok and why
    assert any("no KV cache" in w for w in why)  # EP8: the experts alone fill an 80 GB GPU
    kinds = {(o.kind, o.mtp) for o in ok}
    assert kinds == {("ep", False), ("ep", True), ("pd", False), ("pd", True)}


def test_search_ranks_tp_ep_pd_and_mtp_layouts() -> None:
    catalog = load_catalog()
    r = search(
        catalog,
        model=catalog.model("deepseek-v3"),
        workload=WL_75,
        space=SearchSpace(gpus=("h100-sxm", "h200", "a100-80gb-sxm"), quants=("fp8", "int8")),
    )
    assert r.options and r.at_scale
    costs = [c.monthly_usd for c in r.at_scale]
    assert costs == sorted(costs)
    assert {c.option.kind for c in r.at_scale} == {"ep", "pd"}
    assert any(c.option.mtp for c in r.at_scale)
    # A100 has no FP8: its fp8 layouts are rejected with that reason, int8 (W8A8) is planned
    assert any(w.startswith("a100-80gb-sxm fp8") and "FP8" in w for w in r.at_scale_rejected)
    # the seeds' question: a handful of nodes, far below the tensor-parallel fleets
    assert r.at_scale[0].option.gpus * 4 <= r.options[0].plan.gpus


def test_plan_prints_the_at_scale_section(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "plan", "--model", "deepseek-v3", "--quant", "fp8", "--gpu", "h200",
        "--target-qps", "75", "--prompt-tokens", "512", "--output-tokens", "256",
    ]  # fmt: skip
    code, out, err = cardinal(argv, capsys)
    assert code == 0, err
    assert "At scale (SGLang" in out and "uncertainty" in out
    code, out, _ = cardinal([*argv, "--json", "--layout", "pd", "--mtp", "off"], capsys)
    d = json.loads(out)["at_scale"]
    assert d["layouts"] and all(o["kind"] == "pd" and not o["mtp"] for o in d["layouts"])
    assert d["uncertainty"]["rows"] >= 4


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--model", "llama-3.1-70b", "--quant", "fp8", "--layout", "ep"], "--layout"),
        (["--model", "llama-3.1-70b", "--quant", "fp8", "--mtp", "on"], "--mtp"),
        (["--model", "deepseek-v3", "--quant", "fp8", "--spec-accept", "1.5"], "--spec-accept"),
    ],
)
def test_at_scale_flags_name_themselves_in_errors(
    capsys: pytest.CaptureFixture[str], extra: list[str], flag: str
) -> None:
    argv = ["plan", "--gpu", "h200", "--target-qps", "5", "--prompt-tokens", "512"]
    code, _, err = cardinal([*argv, "--output-tokens", "256", *extra], capsys)
    assert code == 2 and flag in err, err


def test_a_pd_plans_cards_are_its_groups(tmp_path: Any) -> None:
    from gateway import planfile
    from gateway.sim.scale_card import role_card

    plan = tmp_path / "pd.yaml"
    argv = [
        "plan", "--model", "deepseek-v3", "--quant", "fp8", "--gpu", "h100-sxm",
        "--target-qps", "20", "--prompt-tokens", "256", "--output-tokens", "32",
        "--tpot-slo", "20ms", "--layout", "pd", "--mtp", "off", "-o", str(plan),
    ]  # fmt: skip
    from gateway.cli import main

    assert main(argv) == 0
    p = planfile.read(plan.read_text())
    lay = p.data["at_scale"]["layouts"][0]
    catalog = load_catalog()
    decode = role_card(catalog, p, "decode")
    assert decode.groups == lay["decode_groups"]
    assert decode.engine.max_num_seqs == lay["batch_per_gpu"] * lay["decode_gpus_per_group"]
    # the card's step at the plan's batch is the group's: its TPOT is what the plan sized
    seqs = decode.engine.max_num_seqs
    step = decode.speed.decode_step_s(batch=seqs, ctx=256 + 16)
    assert step == pytest.approx(lay["tpot_s"], rel=0.02)
    prefill = role_card(catalog, p, "prefill")
    assert prefill.groups == lay["prefill_groups"] and prefill.speed.accept == 0
    with pytest.raises(Exception, match="prefill or decode"):
        role_card(catalog, p, "ep")


def _run(**over: str) -> dict[str, str]:
    base = {
        "id": "x", "silicon_data_source": "db; silicon_concurrency=256; id=1",
        "backend": "trtllm", "backend_version": "1.1", "model_path": "deepseek-ai/DeepSeek-R1",
        "system": "h200_sxm", "precision": "fp8", "mode": "agg", "isl": "1024", "osl": "1024",
        "batch_size": "32", "tp_size": "1", "attention_dp_size": "8", "moe_ep_size": "8",
        "decode_batch_size": "", "decode_tp_size": "", "decode_attention_dp_size": "",
        "decode_moe_ep_size": "", "silicon_tpot_ms": "40",
    }  # fmt: skip
    return {**base, **over}


def test_measured_ep_runs_keep_dp8_ep8_on_one_node_once() -> None:
    from gateway.calibrate.silicon_scale import convert

    decode = _run(
        mode="disagg", batch_size="", tp_size="", attention_dp_size="", moe_ep_size="",
        decode_batch_size="16", decode_tp_size="1", decode_attention_dp_size="8",
        decode_moe_ep_size="8", system="b200_sxm",
    )  # fmt: skip
    twin = _run(id="y", batch_size="4", attention_dp_size="64")  # the sample's DP 64 label
    out = convert([_run(), _run(id="again"), twin, decode, _run(precision="fp4"),
                   _run(attention_dp_size="1", tp_size="8")])  # fmt: skip
    assert [(r["role"], r["gpu"], r["split"]) for r in out] == [
        ("decode", "b200", "held_out"),
        ("aggregated", "h200", "held_out"),
    ]
    assert out[0]["measured_per_node"] == "3200"  # 16 sequences x 8 ranks / 40 ms
    assert out[0]["ctx"] == "1536" and out[1]["ctx"] == ""
