"""The gateway's counted histogram (n observations of one value in one step) exports what
prometheus_client's own Histogram exports for the same observations."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.server.metrics import ITL_BUCKETS, CountedHistogram


def _samples(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_counted_observations_export_as_the_same_observations_one_by_one() -> None:
    rng = random.Random(17)
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    a = Histogram("gaps", "Gaps.", ("model",), buckets=ITL_BUCKETS, registry=theirs)
    b = CountedHistogram("gaps", "Gaps.", ("model",), buckets=ITL_BUCKETS, registry=ours)
    for _ in range(2000):
        model = rng.choice(("m1", "m2"))
        # values on the bounds themselves too: `le` means a bound's value counts in it
        value = rng.choice((rng.uniform(0, 3), rng.choice(ITL_BUCKETS), 0.0))
        n = rng.randint(1, 40)
        for _ in range(n):
            a.labels(model).observe(value)
        b.labels(model).observe(value, n)
    mine, reference = _samples(ours), _samples(theirs)
    assert len(mine) == len(reference) and any("m2" in line for line in mine)
    for got, want in zip(mine, reference, strict=True):
        if got.startswith("#"):  # HELP and TYPE
            assert got == want
            continue
        name, value = got.rsplit(" ", 1)
        want_name, want_value = want.rsplit(" ", 1)
        assert name == want_name
        assert float(value) == pytest.approx(float(want_value), rel=1e-9)


def test_a_counted_histogram_refuses_the_wrong_labels() -> None:
    h = CountedHistogram("x", "X.", ("model",), buckets=(1.0,), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="model"):
        h.labels("a", "b")
