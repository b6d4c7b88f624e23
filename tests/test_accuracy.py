"""The planner held to its accuracy targets against the sourced calibration figures."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import pytest

from gateway.planner.accuracy import Check, check_all, read_rows, summary
from gateway.planner.catalog import load_catalog

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared/calibration/reference.csv"
BUNDLED_CSV = resources.files("gateway.planner").joinpath("data").joinpath("reference.csv")


def _reference_text() -> str:
    if SHARED_CSV.is_file():
        return SHARED_CSV.read_text(encoding="utf-8")
    return BUNDLED_CSV.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def checks() -> list[Check]:
    return check_all(load_catalog(), read_rows(_reference_text()))


def test_bundled_reference_matches_shared_copy() -> None:
    if not SHARED_CSV.is_file():
        pytest.skip(f"{SHARED_CSV} is absent")
    assert BUNDLED_CSV.read_bytes() == SHARED_CSV.read_bytes()


@pytest.mark.parametrize(
    ("kind", "metric", "bound"),
    [
        ("size", "median_abs_error", 0.03),
        ("size", "max_abs_error", 0.08),
        ("decode_tps", "median_abs_error", 0.25),
    ],
)
def test_accuracy_target(checks: list[Check], kind: str, metric: str, bound: float) -> None:
    value = summary(checks, kind)[metric]
    assert value is not None, f"no {kind} row is modelled"
    assert value <= bound, f"{kind} {metric} {value:.1%} > {bound:.0%}"


@pytest.mark.parametrize(("kind", "at_least"), [("size", 20), ("decode_tps", 18)])
def test_enough_rows_are_modelled(checks: list[Check], kind: str, at_least: int) -> None:
    assert summary(checks, kind)["rows"] >= at_least


def test_every_size_row_within_8_percent(checks: list[Check]) -> None:
    off = [
        (c.row.model, c.row.quant, round(c.error, 4))
        for c in checks
        if c.row.kind == "size" and c.error is not None and abs(c.error) > 0.08
    ]
    assert off == []


def test_rows_not_modelled_say_why(checks: list[Check]) -> None:
    silent = [
        (c.row.kind, c.row.model, c.row.quant)
        for c in checks
        if c.predicted is None and not c.note.strip()
    ]
    assert silent == []


def test_modelled_rows_carry_a_finite_prediction(checks: list[Check]) -> None:
    bad = [
        (c.row.model, c.predicted)
        for c in checks
        if c.predicted is not None and not (math.isfinite(c.predicted) and c.predicted > 0)
    ]
    assert bad == []


def test_read_rows_defaults_to_the_bundled_copy() -> None:
    assert read_rows() == read_rows(BUNDLED_CSV.read_text(encoding="utf-8"))
