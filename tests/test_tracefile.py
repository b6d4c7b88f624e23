"""Trace replay's reading and schedule (loadtest/tracefile.py): the Azure LLM inference trace's
CSV and JSONL, scaled in time, wrapped at the end, split over drivers; bad files name the line."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from loadtest.tracefile import Arrival, TraceError, mean_rate, read, replay

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:47.1805900,1200,7
"""


def test_the_azure_csv_reads_in_time_order_from_its_first_arrival(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text(AZURE)
    rows = read(str(path))
    assert [(a.prompt_tokens, a.output_tokens) for a in rows] == [(374, 44), (1200, 7), (396, 109)]
    assert [a.t for a in rows] == pytest.approx([0.0, 0.5, 4.314579])  # seven digits kept
    assert mean_rate(rows) == pytest.approx(2 / 4.314579)


def test_a_replay_scales_wraps_and_splits() -> None:
    rows = [Arrival(0.0, 10, 1), Arrival(1.0, 20, 2), Arrival(3.0, 30, 3)]  # mean gap 1.5 s
    times = [t for t, _ in itertools.islice(replay(rows, start=100.0, speed=2.0), 6)]
    assert times == pytest.approx([100.0, 100.5, 101.5, 102.25, 102.75, 103.75])  # lap of 4.5 s
    half = [
        a.prompt_tokens
        for _, a in itertools.islice(replay(rows, start=0, speed=1, index=1, total=2), 2)
    ]
    assert half == [20, 20]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("when,prompt\n1,2\n", "line 1 must be TIMESTAMP,ContextTokens,GeneratedTokens"),
        (AZURE + "2023-11-16 18:15,1,1\n", "line 5: '2023-11-16 18:15' is not a time"),
        (AZURE + "2023-11-16 18:15:51,-1,1\n", "line 5: -1 tokens"),
        (AZURE + "2023-11-16 18:15:51,1\n", "line 5: 3 columns expected, got 2"),
        ('{"t": 0, "prompt_tokens": 5, "output_tokens": 1}\n{"t": "1"}\n', "line 2: `t` must be"),
        ('{"t": 0, "prompt_tokens": 5, "output_tokens": 1}\n', "holds 1 arrival(s)"),
        ('{"t": 0, "prompt_tokens": 5.5, "output_tokens": 1}\n{', "line 1: `prompt_tokens`"),
    ],
)
def test_a_bad_trace_names_its_line(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad"
    path.write_text(text)
    with pytest.raises(TraceError) as e:
        read(str(path))
    assert says in str(e.value)
