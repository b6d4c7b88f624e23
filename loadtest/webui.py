"""What Locust shows of an LLM run beyond its request table: the measurements and the verdict.

TTFT, TPOT and output tokens are measured once per request, but they are not requests: fired as
Locust request entries they multiplied the request rate in the UI's header and put token counts
under "ms". They are tallied here instead, and shown in a tab of their own ("LLM measurements"), in
a table after Locust's at the end of a headless run, and the verdict, once a run stops, in another
tab ("Cardinal verdict") and as JSON at GET /verdict. Tabs and tables are Locust's own extension
points (the `extended_tabs` / `extended_tables` template arguments, filled from the
`extended_stats` of /stats/requests), as in Locust's examples/extend_web_ui.py.

No gevent here, and Flask only inside `install` (the web UI's app is Flask).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from verdict import Record, Settings, Verdict, finite, render

MEASURES = (("TTFT", "ms"), ("TPOT", "ms"), ("output tokens", "tokens"))
PERCENTILES = (50, 90, 95, 99)
MEASURES_TAB, VERDICT_TAB = "cardinal-measures", "cardinal-verdict"
COLUMNS = [
    ("name", "Measurement"),
    ("unit", "Unit"),
    ("count", "# requests"),
    ("mean", "Average"),
    ("min", "Min"),
    *((f"p{p}", f"{p}%") for p in PERCENTILES),
    ("max", "Max"),
]
CHECK_COLUMNS = [("name", "Check"), ("value", "Value"), ("limit", "Limit"), ("result", "Result")]


class Tally:
    """One measurement over many requests: count, sum, extremes, and a histogram at three
    significant digits (percentiles to 0.5 %, in bounded memory and time however long the run:
    the UI asks every 2 s, on the generator's own loop). Tallies add up across workers."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.buckets: Counter[float] = Counter()

    def add(self, value: float) -> None:
        value = float(value)
        self.count += 1
        self.total += value
        self.low, self.high = min(self.low, value), max(self.high, value)
        self.buckets[float(f"{value:.3g}")] += 1

    def percentile(self, p: float) -> float:
        """Nearest rank, as the verdict's; NaN when empty."""
        rank, seen = max(1, math.ceil(p / 100 * self.count)), 0
        for value in sorted(self.buckets):
            seen += self.buckets[value]
            if seen >= rank:
                return value
        return math.nan

    def as_dict(self) -> dict[str, Any]:
        """For a worker's report to the master (msgpack: no float keys, no infinities)."""
        return {
            "count": self.count,
            "total": self.total,
            "low": self.low if self.count else 0.0,
            "high": self.high if self.count else 0.0,
            "buckets": list(self.buckets.items()),
        }

    def merge(self, d: dict[str, Any]) -> None:
        if not d["count"]:
            return
        self.count += d["count"]
        self.total += d["total"]
        self.low, self.high = min(self.low, d["low"]), max(self.high, d["high"])
        self.buckets.update({float(v): int(n) for v, n in d["buckets"]})

    def row(self, name: str, unit: str) -> dict[str, Any]:
        row = {"name": name, "unit": unit, "count": self.count}
        row |= {"mean": _round(self.total / self.count), "min": _round(self.low)}
        row |= {f"p{p}": _round(self.percentile(p)) for p in PERCENTILES}
        return row | {"max": _round(self.high)}


class Measures:
    """The run's TTFT and TPOT (ms) and output tokens, over every request answered in full."""

    def __init__(self) -> None:
        self.tallies = {name: Tally() for name, _ in MEASURES}

    def reset(self) -> None:
        """In place: the run's `Load` and the UI hold this object."""
        self.tallies = Measures().tallies

    def add(self, rec: Record, *, stream: bool) -> None:
        if not rec.ok:
            return
        if stream:  # without it the first token is the last: no TTFT or TPOT of its own
            self.tallies["TTFT"].add(rec.ttft * 1e3)
            self.tallies["TPOT"].add(rec.tpot * 1e3)
        self.tallies["output tokens"].add(rec.tokens)

    def take(self) -> dict[str, Any]:
        """What was measured since the last take, cleared here: a worker's next report."""
        taken, self.tallies = self.tallies, Measures().tallies
        return {name: t.as_dict() for name, t in taken.items() if t.count}

    def merge(self, report: dict[str, Any]) -> None:
        for name, tally in report.items():
            self.tallies.setdefault(name, Tally()).merge(tally)

    def rows(self) -> list[dict[str, Any]]:
        return [self.tallies[n].row(n, unit) for n, unit in MEASURES if self.tallies[n].count]


class Board:
    """What the UI shows of the current run: its measurements so far, its verdict once judged."""

    def __init__(self) -> None:
        self.measures = Measures()
        self.verdict: tuple[Verdict, Settings] | None = None
        self.judging = False  # a run started and is not judged yet

    def start(self) -> None:
        """A new run: in place, the UI holds this board."""
        self.measures.reset()
        self.verdict = None
        self.judging = True

    def judged(self, verdict: Verdict, settings: Settings) -> None:
        self.verdict = (verdict, settings)
        self.judging = False

    def stats(self, report: dict[str, Any]) -> dict[str, Any]:
        """/stats/requests as the UI reads it: with the tabs' rows, and "running" until the
        verdict is in. The UI stops asking once a run is not running (its first answer saying
        "cleanup" or "stopping" is its last), so it would never see a verdict judged after."""
        state = report.get("state")
        if self.judging and state not in ("running", "spawning"):
            state = "running"
        return report | {"state": state, "extended_stats": self.extended_stats()}

    def extended_stats(self) -> list[dict[str, Any]]:
        """The tabs' rows, as Locust's UI reads them from /stats/requests."""
        return [
            {"key": MEASURES_TAB, "data": self.measures.rows()},
            {"key": VERDICT_TAB, "data": self.check_rows()},
        ]

    def check_rows(self) -> list[dict[str, Any]]:
        if self.verdict is None:
            pending = {"name": "verdict", "value": "pending", "limit": "when the run stops"}
            return [pending | {"result": ""}]
        v, _ = self.verdict
        lo, hi = v.window
        window = f"{lo:.0f}-{hi:.0f} s"
        rows = [
            {"name": "verdict", "value": v.label, "limit": f"exit {v.code}", "result": ""},
            {"name": "window", "value": window, "limit": f"{v.scheduled} scheduled", "result": ""},
        ]
        for c in v.checks + v.validity:
            result = "ok" if c.ok else "MISSED"
            rows.append({"name": c.name, "value": c.value, "limit": c.limit, "result": result})
        return rows

    def verdict_json(self) -> dict[str, Any]:
        """GET /verdict: label, exit code, the printed table and the whole verdict; nulls until
        a run stops."""
        if self.verdict is None:
            return {"label": None, "code": None, "table": None, "verdict": None}
        v, settings = self.verdict
        return finite(
            {"label": v.label, "code": v.code, "table": render(v, settings)}
            | {"verdict": v.as_dict()}
        )


def install(web_ui: Any, board: Board) -> None:
    """The two tabs, their rows on every /stats/requests, and GET /verdict, on Locust's web UI."""
    from flask import Response, jsonify, request

    web_ui.template_args["extended_tabs"] = [
        {"title": "LLM measurements", "key": MEASURES_TAB},
        {"title": "Cardinal verdict", "key": VERDICT_TAB},
    ]
    web_ui.template_args["extended_tables"] = [
        {"key": MEASURES_TAB, "structure": _structure(COLUMNS)},
        {"key": VERDICT_TAB, "structure": _structure(CHECK_COLUMNS)},
    ]

    @web_ui.app.after_request
    def _extend_stats(response: Response) -> Response:
        if not (request.path.endswith("/stats/requests") and response.is_json):
            return response
        # a new response: Locust caches the one its view returned, for 2 s
        stats = board.stats(response.get_json())
        return web_ui.app.response_class(
            json.dumps(stats), status=response.status_code, mimetype="application/json"
        )

    @web_ui.app.route("/verdict")
    @web_ui.auth_required_if_enabled
    def _verdict() -> Response:
        return jsonify(board.verdict_json())


def render_measures(rows: list[dict[str, Any]]) -> str:
    """The measurements as a console table, after Locust's own at the end of a run."""
    keys = [key for key, _ in COLUMNS]
    lines = ["LLM measurements (every request answered in full; not counted as requests)"]
    lines.append(_console_row(dict(COLUMNS), keys))
    lines.extend(_console_row(row, keys) for row in rows)
    return "\n".join(lines)


def _console_row(row: dict[str, Any], keys: list[str]) -> str:
    name, unit, *numbers = (row[k] for k in keys)
    return f"{name:<16}{unit:<8}" + "".join(f"{'-' if n is None else n:>11}" for n in numbers)


def _structure(columns: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"key": key, "title": title} for key, title in columns]


def _round(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None
