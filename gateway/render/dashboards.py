"""Grafana dashboards (JSON model) and provisioning: fleet overview, per backend, engine view.

Panels query only recording rules (rules.py), so a dashboard and an alert never disagree on what
a number means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.render import yamltext

DATASOURCE = {"type": "prometheus", "uid": "cardinal-prometheus"}
PROMETHEUS_URL = "http://prometheus:9090"
DASHBOARD_DIR = "/var/lib/grafana/dashboards"


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    description: str = ""
    kind: str = "timeseries"
    width: int = 12


def _p(title: str, unit: str, *exprs: tuple[str, str], **kw: Any) -> Panel:
    return Panel(title, unit, exprs, **kw)


def _quantiles(name: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"gateway:{name}:{q}_rate1m", q) for q in ("p50", "p95", "p99"))


FLEET = (
    _p("Backends up", "none", ("gateway:backends_up:count", "up"),
       ("gateway:plan_replicas", "planned"), kind="stat", width=6),
    _p("Capacity headroom", "percentunit", ("gateway:capacity_headroom:ratio", "headroom"),
       description="1 - observed QPS (5m) / the plan's capacity (replicas x capacity_qps).",
       kind="stat", width=6),
    _p("SLO attainment (5m)", "percentunit", ("1 - gateway:slo_miss:ratio_rate5m", "{{slo}}"),
       description="Requests with TTFT within the SLO, tokens within the TPOT SLO, answers "
       "that are not 5xx or 429.", kind="stat", width=6),
    _p("Error ratio", "percentunit", ("gateway:error_ratio:rate1m", "5xx + 429"),
       kind="stat", width=6),
    _p("QPS against the plan", "reqps", ("gateway:qps:rate1m", "observed"),
       ("gateway:plan_target_qps", "plan target"), ("gateway:plan_capacity_qps", "plan capacity")),
    _p("Responses by code", "reqps", ("gateway:qps_by_code:rate1m", "{{code}}")),
    _p("Time to first token", "s", *_quantiles("ttft_seconds"),
       ("gateway:plan_ttft_slo_seconds", "SLO")),
    _p("Inter-token latency", "s", *_quantiles("itl_seconds"),
       ("gateway:plan_tpot_slo_seconds", "TPOT SLO")),
    _p("End-to-end latency", "s", *_quantiles("e2e_seconds")),
    _p("Error budget burn rate (1h)", "none",
       ("gateway:slo_miss:ratio_rate1h / scalar(gateway:plan_error_budget:ratio)", "{{slo}}"),
       description="1 = the budget lasts exactly the month; 14.4 pages."),
    _p("Tokens per second", "short", ("gateway:tokens_by_kind:rate1m", "{{kind}}")),
    _p("Admission queue", "short", ("gateway:queue_depth:sum", "waiting"),
       ("gateway:rejected:rate1m", "rejected/s")),
    _p("Gateway overhead and queue wait (p99)", "s",
       ("gateway:overhead_seconds:p99_rate1m", "overhead"),
       ("gateway:queue_wait_seconds:p99_rate1m", "queue wait")),
)  # fmt: skip

BACKEND = '{backend=~"$backend"}'
BACKENDS = (
    _p("Requests per second", "reqps", (f"gateway:qps_by_backend:rate1m{BACKEND}", "{{backend}}")),
    _p("Error ratio", "percentunit",
       (f"gateway:error_ratio_by_backend:rate1m{BACKEND}", "{{backend}}")),
    _p("In flight", "short", (f"gateway:inflight_by_backend:sum{BACKEND}", "{{backend}}"),
       ("gateway:plan_max_inflight", "plan max")),
    _p("Utilization (in flight / plan max)", "percentunit",
       (f"gateway:backend_utilization:ratio{BACKEND}", "{{backend}}")),
    _p("In rotation", "none", (f"gateway:backend_up:max{BACKEND}", "{{backend}}")),
    _p("Retries away from the backend", "reqps",
       (f"gateway:retries_by_backend:rate1m{BACKEND}", "{{backend}}")),
)  # fmt: skip

INSTANCE = '{instance=~"$instance"}'
ENGINES = (
    _p("Running (batch)", "short", (f"engine:requests_running:sum{INSTANCE}", "{{instance}}"),
       ("gateway:plan_max_inflight", "plan max")),
    _p("Waiting in the engine", "short",
       (f"engine:requests_waiting:sum{INSTANCE}", "{{instance}}")),
    _p("KV cache usage", "percentunit", (f"engine:kv_cache_usage:ratio{INSTANCE}", "{{instance}}")),
    _p("Batch utilization", "percentunit",
       (f"engine:batch_utilization:ratio{INSTANCE}", "{{instance}}")),
    _p("Generated tokens per second", "short",
       (f"engine:generation_tokens:rate1m{INSTANCE}", "{{instance}}")),
    _p("Prompt tokens per second", "short",
       (f"engine:prompt_tokens:rate1m{INSTANCE}", "{{instance}}")),
    _p("Engine time to first token (p95)", "s",
       (f"engine:ttft_seconds:p95_rate1m{INSTANCE}", "{{instance}}"),
       description="vLLM only: llama-server publishes no latency histograms."),
    _p("Engine inter-token latency (p95)", "s",
       (f"engine:itl_seconds:p95_rate1m{INSTANCE}", "{{instance}}"),
       description="vLLM only: llama-server publishes no latency histograms."),
)  # fmt: skip

DASHBOARDS: dict[str, tuple[str, str, tuple[Panel, ...], str | None]] = {
    # file stem: (uid, title, panels, template variable and the series it lists)
    "fleet-overview": ("cardinal-fleet", "Cardinal: fleet overview", FLEET, None),
    "backends": ("cardinal-backends", "Cardinal: per backend", BACKENDS, "backend"),
    "engines": ("cardinal-engines", "Cardinal: engines (vLLM, llama.cpp)", ENGINES, "instance"),
}
VARIABLE_SOURCE = {"backend": "gateway:backend_up:max", "instance": "engine:requests_running:sum"}


def dashboard(stem: str) -> dict[str, Any]:
    uid, title, panels, variable = DASHBOARDS[stem]
    return {
        "uid": uid,
        "title": title,
        "tags": ["cardinal"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [_variable(variable)] if variable else []},
        "panels": _layout(panels),
    }


def _layout(panels: tuple[Panel, ...]) -> list[dict[str, Any]]:
    """Left to right in rows of 24 columns; a row is as tall as its tallest panel."""
    out, x, y, row = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        height = 4 if p.kind == "stat" else 8
        if x + p.width > 24:
            x, y, row = 0, y + row, 0
        out.append(_panel(i, p, {"h": height, "w": p.width, "x": x, "y": y}))
        x, row = x + p.width, max(row, height)
    return out


def _panel(panel_id: int, p: Panel, grid: dict[str, int]) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if p.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [
            {"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": e, "legendFormat": leg}
            for j, (e, leg) in enumerate(p.exprs)
        ],
    }


def _variable(name: str) -> dict[str, Any]:
    query = f"label_values({VARIABLE_SOURCE[name]}, {name})"
    return {
        "name": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": "variable"},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def render_dashboards() -> dict[str, str]:
    """`<stem>.json` -> dashboard JSON."""
    return {f"{s}.json": json.dumps(dashboard(s), indent=2) + "\n" for s in DASHBOARDS}


def render_datasource(url: str = PROMETHEUS_URL) -> str:
    data = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "type": "prometheus",
                "uid": DATASOURCE["uid"],
                "access": "proxy",
                "url": url,
                "isDefault": True,
                "jsonData": {"timeInterval": "5s"},
            }
        ],
    }
    return "# Grafana datasource (cardinal render).\n" + yamltext.dump(data)


def render_dashboard_provider(path: str = DASHBOARD_DIR) -> str:
    data = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "cardinal",
                "folder": "Cardinal",
                "type": "file",
                "disableDeletion": True,
                "options": {"path": path},
            }
        ],
    }
    return "# Grafana dashboards from files (cardinal render).\n" + yamltext.dump(data)
