"""One Locust run of `loadtest/qps.py` against a gateway, watched while it runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

import loadtest
from gateway.prove.fleet import tracked
from gateway.prove.ground import (
    cards_snapshot,
    client_figures,
    figures,
    gateway_snapshot,
    read_records,
)
from gateway.prove.simlag import LagCount, judge_lag, lag_check, lag_count, lost_s
from loadtest.verdict import finite

QPS_LOCUSTFILE = Path(loadtest.__file__).with_name("qps.py")
SAMPLE_EVERY_S = 2.0
SETTLE_S = 0.3
# a card's queue and batch, in vLLM's and llama.cpp's names (an engine exposes one of each)
WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")
RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing")


@dataclass(frozen=True)
class Sample:
    """What the gateway and the cards said at one moment of the run."""

    t: float  # seconds since the run started
    requests: float  # gateway_requests_total, all codes
    by_backend: dict[str, float]
    inflight: float
    queued: float
    waiting: list[float | None]  # requests queued per card (None: the card does not say)
    running: list[float | None]  # requests in the batch per card (None: the card does not say)


@dataclass
class Trial:
    name: str
    target_qps: float
    cards: int
    code: int
    verdict: dict[str, Any]
    settings: dict[str, Any]
    records_csv: Path
    table: str  # the verdict table qps.py printed
    samples: list[Sample] = field(default_factory=list)
    # the whole run's figures as the client, the gateway and the cards measured them (ground.py)
    ground: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.code == 0

    @property
    def invalid(self) -> bool:
        """Not judged: qps.py exits 2 when its generator could not keep the schedule."""
        return self.code == 2


def metrics(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] from a /metrics page (empty when it cannot be read)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(m: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(v for _, v in m.get(name, []))


def slots(url: str) -> list[dict[str, Any]] | None:
    """llama.cpp's `/slots`, one object per slot (None: the card has no such endpoint)."""
    try:
        with urllib.request.urlopen(url + "/slots", timeout=2) as r:
            data = json.loads(r.read())
    except (OSError, ValueError):
        return None
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        return None
    return data


def _figure(m: dict[str, list[tuple[dict[str, str], float]]], names: Sequence[str]) -> float | None:
    return sum(total(m, n) for n in names) if any(n in m for n in names) else None


def _running(m: dict[str, list[tuple[dict[str, str], float]]], url: str) -> float | None:
    """The card's batch from its metrics, else from llama.cpp's /slots, else not known."""
    figure = _figure(m, RUNNING)
    if figure is None and (busy := slots(url)) is not None:
        figure = float(sum(bool(x.get("is_processing")) for x in busy))
    return figure


def sample(gateway: str, cards: list[str], t: float) -> Sample:
    g = metrics(gateway)
    by_backend: dict[str, float] = {}
    for labels, v in g.get("gateway_requests_total", []):
        by_backend[labels.get("backend", "")] = by_backend.get(labels.get("backend", ""), 0) + v
    per_card = [metrics(c) for c in cards]
    return Sample(
        t=t,
        requests=total(g, "gateway_requests_total"),
        by_backend=by_backend,
        inflight=total(g, "gateway_inflight_requests"),
        queued=total(g, "gateway_queue_depth"),
        waiting=[_figure(m, WAITING) for m in per_card],
        running=[_running(m, url) for m, url in zip(per_card, cards, strict=True)],
    )


def run_trial(
    *,
    name: str,
    plan_path: Path | None,
    gateway: str,
    cards: list[str],
    target_qps: float,
    duration_s: float,
    out_dir: Path,
    progress: Callable[[str], None],
    scenario: Sequence[str] = (),
    lag_also: Sequence[str] = (),
) -> Trial:
    """Run qps.py headless at `target_qps` for `duration_s`; sample the fleet every 2 s.
    `scenario`: more qps.py flags (all of the workload when there is no plan file). A simulated
    card whose loop ran late in the judged window makes the trial INVALID; `lag_also`: more
    simulated cards to judge so (a PD fleet's prefill workers, which answer no client)."""
    summary, records = out_dir / f"{name}.summary.json", out_dir / f"{name}.records.csv"
    argv = [str(Path(sys.executable).with_name("locust")), "-f", str(QPS_LOCUSTFILE)]
    argv += ["--headless", "--only-summary", "--host", gateway, "-t", f"{round(duration_s)}s"]
    argv += ["--plan", str(plan_path)] if plan_path else []
    argv += [*scenario, "--target-qps", f"{target_qps:g}"]
    argv += ["--summary-json", str(summary), "--records-csv", str(records)]
    samples: list[Sample] = []
    lag_urls = [*cards, *lag_also]
    lags = [_lags(lag_urls)]  # (time, each card's loop lag so far), for the judged window
    before = _servers(gateway, cards)
    with (out_dir / f"{name}.locust.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
        with tracked(proc):  # an interrupt stops Locust too, with no verdict read from it
            watcher = threading.Thread(
                target=_watch,
                args=(proc, gateway, cards, samples, duration_s, progress),
                kwargs={"lags": lags, "lag_urls": lag_urls},
                daemon=True,
            )
            watcher.start()
            out, _ = proc.communicate()
            watcher.join(timeout=5)
        log.write(out)
    if not summary.exists():
        raise RuntimeError(f"Locust wrote no verdict (exit {proc.returncode}); see {log.name}")
    time.sleep(SETTLE_S)  # what the client cut at the end reaches the servers' counters
    after = _servers(gateway, cards)
    ground = {
        "client": client_figures(read_records(records)),
        **{k: figures(before[k], after[k]) for k in ("gateway", "cards")},
    }
    data = json.loads(summary.read_text())
    data["ground"] = ground  # beside the verdict in the same file (docs/summary.md)
    summary.write_text(json.dumps(finite(data), indent=2), encoding="utf-8")
    data["verdict"]["stats"] = {  # null in the file: nothing measured, or no bound
        k: math.nan if v is None else v for k, v in data["verdict"]["stats"].items()
    }
    table = out[out.find("Cardinal verdict") :].split("\n[")[0].rstrip()
    code, verdict = proc.returncode, data["verdict"]
    lags.append(_lags(lag_urls))
    lo, hi = (data["start"] + edge for edge in verdict["window"])
    if (check := lag_check(lags, lo, hi)) is not None:
        lost = lost_s(lags, lo, hi)
        code, table = judge_lag(check, code=code, verdict=verdict, table=table, lost_s=lost)
    return Trial(
        name=name,
        target_qps=target_qps,
        cards=len(cards),
        code=code,
        verdict=verdict,
        settings=data["settings"],
        records_csv=records,
        table=table,
        samples=samples,
        ground=ground,
    )


def _servers(gateway: str, cards: list[str]) -> dict[str, dict[str, Any]]:
    """The gateway's and the cards' histograms and token counters at this moment."""
    return {
        "gateway": gateway_snapshot(metrics(gateway)),
        "cards": cards_snapshot([metrics(c) for c in cards]),
    }


def _lags(cards: list[str]) -> tuple[float, list[LagCount | None]]:
    return time.time(), [lag_count(metrics(c)) for c in cards]


def _watch(
    proc: subprocess.Popen[str],
    gateway: str,
    cards: list[str],
    samples: list[Sample],
    duration_s: float,
    progress: Callable[[str], None],
    *,
    lags: list[tuple[float, list[LagCount | None]]],
    lag_urls: list[str],
) -> None:
    t0 = time.monotonic()
    last_print = 0.0
    while proc.poll() is None:
        time.sleep(SAMPLE_EVERY_S)
        s = sample(gateway, cards, time.monotonic() - t0)
        prev = samples[-1] if samples else None
        samples.append(s)
        lags.append(_lags(lag_urls))
        if prev and s.t - last_print >= 5:
            last_print = s.t
            rate = (s.requests - prev.requests) / (s.t - prev.t)
            progress(
                f"  {min(s.t, duration_s):4.0f}/{duration_s:.0f} s  done {rate:6.2f} QPS"
                f"  in flight {s.inflight:4.0f}"
                f"  gateway queue {s.queued:3.0f}  card batch {card_mean(s.running)}"
                f"  card queue {card_mean(s.waiting)}"
            )


def known_mean(values: Sequence[float | None]) -> float | None:
    """The mean of the figures the cards gave (None: none gave one)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def card_mean(values: Sequence[float | None]) -> str:
    mean = known_mean(values)
    return "unknown" if mean is None else f"{mean:5.1f}"


def wait_idle(gateway: str, cards: list[str], *, timeout_s: float = 120) -> None:
    """Let the backlog of an overloaded trial drain before the next one starts."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = sample(gateway, cards, 0)
        if s.inflight == 0 and not any(s.waiting) and not any(s.running):
            return
        time.sleep(0.5)
