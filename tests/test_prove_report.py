"""The proof report explains a FAIL: each run gets its own plots, binding constraint and one-line
cause (from its records' errors, or the checks it missed), and the runs stand side by side."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from gateway.prove.binding import ErrorCause, errors_by_cause, failure_cause
from gateway.prove.trial import Trial
from gateway.server.errors import Overloaded
from loadtest.verdict import check_row
from tests.test_prove import _plan, _prove


def _429(message: str) -> str:
    """A record's error as qps.py writes it for the gateway's 429 (its body, first 300 bytes)."""
    return f"HTTP 429: {json.dumps(Overloaded(message, retry_after_s=1).body())[:300]}"


def _messages(error: str) -> str:
    """What a record's error says, read the way a user would: the gateway's message, quoted."""
    status, body = error.removeprefix("HTTP ").split(": ", 1)
    return f'got {status} "{json.loads(body)["error"]["message"]}"'


def test_the_report_of_a_failing_run_names_its_cause(tmp_path: Path) -> None:
    """A real proof: 3 cards pass at 35 QPS and 2 fail (the plan is neither short nor padded).
    The failing run's cause is named on the
    console and in its own report section, each error's share as its records measure it; each
    run has plots of its own; the two stand side by side."""
    plan = _plan(tmp_path, 35)  # 3 cards of 13.0 QPS; 2 cards are 26 % short
    run = _prove(plan, "--check-minimal", "--duration", "15s", timeout=240)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    report = tmp_path / "report"
    summary = json.loads((report / "minus-one.summary.json").read_text())
    lo, hi = summary["verdict"]["window"]
    with (report / "minus-one.records.csv").open(newline="") as f:
        window = [r for r in csv.DictReader(f) if lo <= float(r["scheduled_s"]) < hi]
    errors = Counter(r["error"] for r in window if r["error"])
    assert errors and all(e.startswith("HTTP 429: ") for e in errors), errors
    shares = [f"{100 * n / len(window):.1f} % {_messages(e)}" for e, n in errors.most_common()]
    cause = f"refused: {', '.join(shares)}"

    out = run.stdout
    assert "proof at 35.00 QPS on 3 card(s): PASS" in out
    assert "minus-one at 35.00 QPS on 2 card(s): FAIL" in out
    assert "neither short nor padded" in out
    assert f"\ncause of FAIL: {cause}\n" in out
    # the failing run's own binding line (the passing run may be queue-bound too, at 90 % busy)
    assert "binding constraint: queue-bound" in out[out.index("minus-one at 35.00 QPS") :]
    assert out.count("binding constraint: ") == 2
    assert not [t for t in re.findall(r"(\d+)/15 s ", out) if int(t) > 15]

    assert (report / "proof.records.csv").stat().st_size > 0
    page = (report / "index.html").read_text()
    section = page[page.index('<h2 id="minus-one">') :]
    assert f"<b>Cause of FAIL:</b> {_html(cause)}</p>" in section
    assert "Binding constraint: queue-bound" in section
    for name in ("qps", "latency", "cards"):
        assert f'src="minus-one.{name}.png"' in section and f'src="proof.{name}.png"' not in section
        for trial in ("proof", "minus-one"):
            assert (report / f"{trial}.{name}.png").stat().st_size > 0
    side = page[page.index("The runs side by side") : page.index('<h2 id="proof">')]
    proof = json.loads((report / "proof.summary.json").read_text())["verdict"]
    completed = [f"{v['completed_qps']:.2f}" for v in (proof, summary["verdict"])]
    assert f"<th>completed QPS</th><td>{completed[0]}</td><td>{completed[1]}</td>" in side
    assert f"<th>errors</th><td>0 (0.0 %)</td><td>{sum(errors.values())} (" in side


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;")


@pytest.mark.parametrize(
    ("error", "verb", "what"),
    [
        (_429("no slot for `m` within 5 s"), "refused", 'got 429 "no slot for `m` within 5 s"'),
        # qps.py keeps 300 bytes of a body: a message cut short is still read
        ('HTTP 503: {"error": {"message": "no healthy backend for `m', "failed",
         'got 503 "no healthy backend for `m"'),
        ("HTTP 502: Bad Gateway", "failed", 'got 502 "Bad Gateway"'),
        ("TimeoutError: timed out", "failed", "ended in TimeoutError: timed out"),
        ("unfinished", "unanswered", "were still waiting for their answer when the run ended"),
    ],
)  # fmt: skip
def test_errors_are_grouped_by_what_the_requests_got_back(error: str, verb: str, what: str) -> None:
    rows = [{"error": error}, {"error": ""}, {"error": error}]
    assert errors_by_cause(rows) == [ErrorCause(verb, what, 2)]


def _trial(tmp_path: Path, code: int, errors: list[str], checks: list[dict[str, object]]) -> Trial:
    """A trial judged on 10 requests in its window 0-10 s, `errors` among them."""
    path = tmp_path / "t.records.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scheduled_s", "end_s", "error"])
        for i in range(10):
            w.writerow([i + 0.5, i + 1.0, errors[i] if i < len(errors) else ""])
        w.writerow([10.5, "nan", "unfinished"])  # after the window: not judged
    verdict = {"window": [0.0, 10.0], "checks": checks, "validity": checks, "label": "?"}
    return Trial(name="t", target_qps=1, cards=1, code=code, verdict=verdict, settings={},
                 records_csv=path, table="")  # fmt: skip


ERRORS_MISSED = {"name": "error rate", "value": "20.0%", "limit": "<= 1.0%", "ok": False}
TTFT_MISSED = {"name": "p95 TTFT", "value": "1203 ms", "limit": "<= 1000 ms", "ok": False}


def test_a_fail_with_too_many_errors_is_caused_by_them(tmp_path: Path) -> None:
    trial = _trial(tmp_path, 1, [_429("no slot for `m` within 5 s")] * 2, [ERRORS_MISSED])
    assert failure_cause(trial, binding="queue-bound") == (
        'refused: 20.0 % got 429 "no slot for `m` within 5 s"'
    )


def test_a_fail_without_errors_names_the_missed_checks_and_the_binding_constraint(
    tmp_path: Path,
) -> None:
    trial = _trial(tmp_path, 1, [], [TTFT_MISSED])
    assert failure_cause(trial, binding="TTFT/prefill-bound: ...") == (
        "missed p95 TTFT 1203 ms (<= 1000 ms); TTFT/prefill-bound: ..."
    )


def test_an_invalid_run_names_what_it_could_not_judge_and_a_pass_has_no_cause(
    tmp_path: Path,
) -> None:
    window = {"name": "measurement window", "value": "1.5 s", "limit": ">= 10 s", "ok": False}
    assert failure_cause(_trial(tmp_path, 2, [], [window]), binding="") == (
        "not judged: measurement window 1.5 s (>= 10 s)"
    )
    assert failure_cause(_trial(tmp_path, 0, [], []), binding="") is None


def test_a_long_limit_does_not_run_into_the_result() -> None:
    for limit in ("<= 250 ms (median, 1st-3rd third)", "x" * 40):
        row = check_row("queue not growing", "22 ms rise", limit, "MISSED")
        assert re.fullmatch(r"  queue not growing +22 ms rise   \S.*\S +MISSED", row), row
        assert row.split(limit)[1].startswith(" "), row
