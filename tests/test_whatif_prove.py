"""`cardinal whatif` against `cardinal prove` (tests/whatif_agreement.py): the same plan, 4 cards,
trace and routing agree on completed requests exactly and on p50/p95 TTFT and TPOT within 5 %."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.whatif_agreement import measure

TOLERANCE = 0.05


@pytest.mark.slow
def test_whatif_agrees_with_prove_on_four_cards(tmp_path: Path) -> None:
    a = measure(tmp_path)
    print("\n".join(a.lines()))
    assert a.completed_prove == a.completed_whatif == a.requests
    assert a.worst <= TOLERANCE, a.lines()
