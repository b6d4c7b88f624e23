"""`cardinal plan --search` end to end: the table, --json, -o --pick, --plot, --prices, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import planfile
from gateway.cli import main
from tests.test_cli import cardinal

SEARCH = [
    "plan",
    "--search",
    "--model",
    "deepseek-r1-distill-qwen-7b",
    "--target-qps",
    "20",
    "--prompt-tokens",
    "512",
    "--output-tokens",
    "256",
    "--gpus",
    "l40s,a100-80gb-sxm,h100-sxm",
    "--quants",
    "awq,fp8,q4_k_m",
]


def test_search_prints_the_ranked_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cardinal(SEARCH, capsys)
    assert code == 0, err
    for heading in ("Ranked by monthly cost", "Cheapest per GPU type", "Rejected", "$/month"):
        assert heading in out


def test_json_lists_options_cheapest_first(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cardinal([*SEARCH, "--json"], capsys)
    d = json.loads(out)
    assert code == 0
    costs = [o["monthly_usd"] for o in d["options"]]
    assert costs == sorted(costs)
    assert {c["gpu"] for c in d["cheapest_per_gpu"]} <= {"l40s", "a100-80gb-sxm", "h100-sxm"}
    assert all(x["reason"] for x in d["rejected"])
    assert d["combinations"] == len(d["options"]) + len(d["rejected"])


@pytest.mark.parametrize("pick", [1, 3])
def test_pick_writes_that_row_as_a_valid_plan(
    pick: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cardinal([*SEARCH, "--json"], capsys)
    row = json.loads(out)["options"][pick - 1]
    path = tmp_path / "fleet.yaml"
    code, out, err = cardinal([*SEARCH, "-o", str(path), "--pick", str(pick)], capsys)
    assert code == 0, err
    plan = planfile.load(path.read_text(encoding="utf-8"))
    assert (plan["inputs"]["gpu"], plan["inputs"]["quant"]) == (row["gpu"], row["quant"])
    assert (plan["fleet"]["gpus"], plan["replica"]["gpus"]) == (
        row["gpus"],
        row["gpus_per_replica"],
    )
    assert plan["cost"]["monthly_usd"] == pytest.approx(row["monthly_usd"])
    assert (tmp_path / "fleet-search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["show", str(path)]) == 0


def test_plot_flag_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cardinal([*SEARCH, "--plot", str(tmp_path / "cost.png")], capsys)
    assert code == 0 and "cost.png" in out
    assert (tmp_path / "cost.png").stat().st_size > 10_000


def test_prices_file_overrides_the_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "gpus:\n"
        "  l40s: {usd_per_hour: 50, source: test}\n"
        "  h100-sxm:\n"
        "    basis: owned\n    purchase_usd: 8760\n    years: 10\n"
        "    watts: 0\n    usd_per_kwh: 0\n",
        encoding="utf-8",
    )
    code, out, _ = cardinal([*SEARCH, "--json", "--prices", str(prices)], capsys)
    d = json.loads(out)
    assert d["options"][0]["gpu"] == "h100-sxm"
    assert d["options"][0]["price"] == {
        "usd_per_hour": 0.1,
        "basis": "owned",
        "source": "prices file",
    }
    assert d["options"][-1]["gpu"] == "l40s"


def test_no_option_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*SEARCH, "--tpot-slo", "1ms"]
    code, out, _ = cardinal(argv, capsys)
    assert code == 1 and "No combination meets the SLOs." in out


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--pick", "2"], "--pick"),
        (["-o", "{tmp}/f.yaml", "--pick", "999"], "--pick"),
        (["--gpus", "no-such-card"], "--gpus"),
        (["--quants", "q9_k"], "--quants"),
        (["--engines", "tgi"], "--engines"),
        (["--min-quality", "superb"], "--min-quality"),
        (["--prices", "{tmp}/missing.yaml"], "--prices"),
        (["--prices", "{tmp}/bad.yaml"], "--prices"),
        (["--prices", "{tmp}/broken.yaml"], "--prices"),
        (["--gpu-price", "2"], "--gpu-price"),
        (["--per-card-qps", "2"], "--per-card-qps"),
        (["--pick", "0"], "--pick"),
    ],
)
def test_errors_are_one_line_naming_the_flag(
    extra: list[str], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.yaml").write_text("gpus:\n  a100: {usd_per_hour: -2}\n", encoding="utf-8")
    (tmp_path / "broken.yaml").write_text("gpus: [\n", encoding="utf-8")
    argv = [*SEARCH, *(a.replace("{tmp}", str(tmp_path)) for a in extra)]
    code, out, err = cardinal(argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err


@pytest.mark.parametrize("flag", [["--gpus", "l4"], ["--min-quality", "good"], ["--pick", "1"]])
def test_search_flags_need_search(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a for a in SEARCH if a != "--search"][:9] + ["--quant", "awq", "--gpu", "l4", *flag]
    code, _, err = cardinal(argv, capsys)
    assert code == 2 and flag[0] in err and "--search" in err


def test_plan_without_search_still_needs_quant_and_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a for a in SEARCH if a != "--search"][:9]
    code, _, err = cardinal(argv, capsys)
    assert code == 2 and "--quant" in err and "--search" in err
