"""Prometheus rules: recording rules over the gateway's and engines' series, the plan's numbers
as series, SLO miss ratios at the plan's SLOs, and the alerts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.render import yamltext
from gateway.render.fleet import Fleet, fleet_from_plan

# The gateway's histogram buckets (gateway/server/metrics.py; a test holds the copies equal): an
# SLO is counted at a bucket boundary, so the renderer must know them without importing the server.
TTFT_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0,
    60.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    1.0, 2.5,
)  # fmt: skip
SLO_OBJECTIVE = 0.99  # share of requests (TTFT), tokens (ITL) and answers (availability) in SLO
WINDOWS = ("5m", "30m", "1h", "6h")  # the multiwindow burn-rate pairs: (1h, 5m) and (6h, 30m)
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
ERRORS = 'code=~"5..|429"'  # a refused request (429) misses the SLO as surely as a failed one

HISTOGRAMS = {
    "ttft_seconds": "gateway_time_to_first_token_seconds",
    "itl_seconds": "gateway_inter_token_latency_seconds",
    "e2e_seconds": "gateway_request_duration_seconds",
}


def bucket_at_or_below(slo_s: float, buckets: Sequence[float]) -> float:
    """The largest bucket bound <= the SLO: a request counted good there surely met the SLO."""
    below = [b for b in buckets if b <= slo_s + 1e-12]
    return below[-1] if below else buckets[0]


def le(value: float) -> str:
    """A bucket bound as client_python writes the `le` label: 2.0, 0.05."""
    return repr(float(value))


def _rule(record: str, expr: str, **labels: str) -> dict[str, Any]:
    return {"record": record, "expr": expr, **({"labels": labels} if labels else {})}


def gateway_rules() -> list[dict[str, Any]]:
    """Traffic, errors, latency percentiles, load and queues: independent of any plan."""
    total = "gateway_requests_total"
    rules = [
        _rule("gateway:qps:rate1m", f"sum(rate({total}[1m]))"),
        _rule("gateway:qps:rate5m", f"sum(rate({total}[5m]))"),
        _rule("gateway:qps_by_backend:rate1m", f"sum by (backend) (rate({total}[1m]))"),
        _rule("gateway:qps_by_code:rate1m", f"sum by (code) (rate({total}[1m]))"),
        # `or vector(0)`: no error series yet means a ratio of 0, not "no data"
        _rule(
            "gateway:error_ratio:rate1m",
            f"(sum(rate({total}{{{ERRORS}}}[1m])) or vector(0)) / sum(rate({total}[1m]))",
        ),
        # `or ... * 0`: every backend gets a series, 0 until it fails
        _rule(
            "gateway:error_ratio_by_backend:rate1m",
            f"sum by (backend) (rate({total}{{{ERRORS}}}[1m]) or rate({total}[1m]) * 0)"
            f" / sum by (backend) (rate({total}[1m]))",
        ),
    ]
    for name, metric in HISTOGRAMS.items():
        for q, value in QUANTILES.items():
            expr = f"histogram_quantile({value}, sum by (le) (rate({metric}_bucket[1m])))"
            rules.append(_rule(f"gateway:{name}:{q}_rate1m", expr))
    for name, metric in (("queue_wait_seconds", "gateway_queue_wait_seconds"),
                         ("overhead_seconds", "gateway_overhead_seconds")):  # fmt: skip
        expr = f"histogram_quantile(0.99, sum by (le) (rate({metric}_bucket[1m])))"
        rules.append(_rule(f"gateway:{name}:p99_rate1m", expr))
    return rules + [
        _rule("gateway:tokens_by_kind:rate1m", "sum by (kind) (rate(gateway_tokens_total[1m]))"),
        _rule("gateway:inflight_by_backend:sum", "sum by (backend) (gateway_inflight_requests)"),
        _rule(
            "gateway:backend_utilization:ratio",
            "gateway:inflight_by_backend:sum / scalar(gateway:plan_max_inflight)",
        ),
        _rule("gateway:backend_up:max", "max by (backend) (gateway_backend_up)"),
        _rule("gateway:backends_up:count", "sum(gateway:backend_up:max)"),
        _rule("gateway:queue_depth:sum", "sum(gateway_queue_depth)"),
        _rule(
            "gateway:rejected:rate1m",
            "sum(rate(gateway_rejected_requests_total[1m])) or vector(0)",
        ),
        _rule(
            "gateway:retries_by_backend:rate1m",
            # `or ... * 0`: a 0 for every backend that has not been retried away from yet
            "sum by (backend) (rate(gateway_retries_total[1m])) or gateway:backend_up:max * 0",
        ),
        _rule(
            "gateway:capacity_headroom:ratio",
            "1 - gateway:qps:rate5m / scalar(gateway:plan_capacity_qps)",
        ),
        _rule("gateway:qps_vs_plan:ratio", "gateway:qps:rate5m / scalar(gateway:plan_target_qps)"),
    ]


def engine_rules() -> list[dict[str, Any]]:
    """The engines' own view, one name for vLLM (new and old series) and llama.cpp."""

    def either(agg: str, *metrics: str) -> str:
        return " or ".join(f"{agg} by (instance) ({m})" for m in metrics)

    def quantile(metric: str) -> str:
        return f"histogram_quantile(0.95, sum by (le, instance) (rate({metric}_bucket[1m])))"

    return [
        _rule(
            "engine:requests_running:sum",
            either("sum", "vllm:num_requests_running", "llamacpp:requests_processing"),
        ),
        _rule(
            "engine:requests_waiting:sum",
            either("sum", "vllm:num_requests_waiting", "llamacpp:requests_deferred"),
        ),
        _rule(
            "engine:kv_cache_usage:ratio",
            either(
                "max",
                "vllm:kv_cache_usage_perc",
                "vllm:gpu_cache_usage_perc",
                "llamacpp:kv_cache_usage_ratio",
            ),
        ),
        _rule(
            "engine:batch_utilization:ratio",
            "engine:requests_running:sum / scalar(gateway:plan_max_inflight)",
        ),
        _rule(
            "engine:generation_tokens:rate1m",
            either(
                "sum",
                "rate(vllm:generation_tokens_total[1m])",
                "rate(llamacpp:tokens_predicted_total[1m])",
            ),
        ),
        _rule(
            "engine:prompt_tokens:rate1m",
            either(
                "sum",
                "rate(vllm:prompt_tokens_total[1m])",
                "rate(llamacpp:prompt_tokens_total[1m])",
            ),
        ),
        _rule("engine:ttft_seconds:p95_rate1m", quantile("vllm:time_to_first_token_seconds")),
        _rule(
            "engine:itl_seconds:p95_rate1m",
            f"{quantile('vllm:inter_token_latency_seconds')}"
            f" or {quantile('vllm:time_per_output_token_seconds')}",
        ),
    ]


def plan_rules(fleet: Fleet) -> list[dict[str, Any]]:
    """The plan's numbers as series, so dashboards and alerts compare against them."""
    return [
        _rule("gateway:plan_capacity_qps", f"vector({fleet.capacity_total_qps:g})"),
        _rule("gateway:plan_target_qps", f"vector({fleet.target_qps:g})"),
        _rule("gateway:plan_max_inflight", f"vector({fleet.max_inflight})"),
        _rule("gateway:plan_replicas", f"vector({fleet.replicas})"),
        # alert once half of the spare capacity the plan reserved is used up
        _rule("gateway:plan_headroom_alert:ratio", f"vector({fleet.headroom / 2:g})"),
        _rule("gateway:plan_ttft_slo_seconds", f"vector({fleet.ttft_slo_s:g})"),
        _rule("gateway:plan_tpot_slo_seconds", f"vector({fleet.tpot_slo_s:g})"),
        _rule("gateway:plan_error_budget:ratio", f"vector({1 - SLO_OBJECTIVE:g})"),
    ]


def slo_rules(fleet: Fleet) -> list[dict[str, Any]]:
    """Share of requests (tokens) missing each SLO, per burn-rate window."""
    ttft = le(bucket_at_or_below(fleet.ttft_slo_s, TTFT_BUCKETS))
    itl = le(bucket_at_or_below(fleet.tpot_slo_s, ITL_BUCKETS))
    total = "gateway_requests_total"
    rules = []
    for w in WINDOWS:
        for slo, metric, bound in (
            ("ttft", "gateway_time_to_first_token_seconds", ttft),
            ("itl", "gateway_inter_token_latency_seconds", itl),
        ):
            expr = (
                f'1 - sum(rate({metric}_bucket{{le="{bound}"}}[{w}]))'
                f" / sum(rate({metric}_count[{w}]))"
            )
            rules.append(_rule(f"gateway:slo_miss:ratio_rate{w}", expr, slo=slo))
        expr = f"(sum(rate({total}{{{ERRORS}}}[{w}])) or vector(0)) / sum(rate({total}[{w}]))"
        rules.append(_rule(f"gateway:slo_miss:ratio_rate{w}", expr, slo="availability"))
    return rules


def alert_rules() -> list[dict[str, Any]]:
    """Burn rate (Google SRE workbook multiwindow), backend down, queues growing, headroom."""

    def burn(long: str, short: str, factor: float) -> str:
        budget = f"{factor:g} * scalar(gateway:plan_error_budget:ratio)"
        return (
            f"gateway:slo_miss:ratio_rate{long} > {budget}\n"
            f"and gateway:slo_miss:ratio_rate{short} > {budget}"
        )

    return [
        _alert(
            "GatewaySLOBurnRateFast", burn("1h", "5m", 14.4), "2m", "page",
            "{{ $labels.slo }} SLO burning its 30-day error budget 14x too fast",
            "At this rate the month's budget for {{ $labels.slo }} is gone in about two days.",
        ),
        _alert(
            "GatewaySLOBurnRateSlow", burn("6h", "30m", 6), "15m", "ticket",
            "{{ $labels.slo }} SLO burning its error budget 6x too fast",
            "At this rate the month's budget for {{ $labels.slo }} is gone in five days.",
        ),
        _alert(
            "GatewayBackendDown", "gateway:backend_up:max == 0", "1m", "page",
            "backend {{ $labels.backend }} is out of rotation",
            "Every gateway has ejected {{ $labels.backend }}: its capacity is missing.",
        ),
        _alert(
            "GatewayQueueGrowing",
            "gateway:queue_depth:sum > 0 and deriv(gateway:queue_depth:sum[5m]) > 0",
            "5m", "ticket",
            "the gateway's admission queue keeps growing",
            "Requests arrive faster than the backends finish them: add replicas.",
        ),
        _alert(
            "EngineQueueGrowing",
            "engine:requests_waiting:sum > 0 and deriv(engine:requests_waiting:sum[5m]) > 0",
            "5m", "ticket",
            "engine {{ $labels.instance }} queue keeps growing",
            "The engine holds more requests than its batch: its share of the load is too big.",
        ),
        _alert(
            "GatewayHeadroomLow",
            "gateway:capacity_headroom:ratio < scalar(gateway:plan_headroom_alert:ratio)",
            "10m", "ticket",
            "capacity headroom is below half of what the plan reserved",
            "Observed QPS has used more than half of the spare capacity the plan reserved.",
        ),
    ]  # fmt: skip


def _alert(
    name: str, expr: str, for_: str, severity: str, summary: str, description: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def _dump(header: str, groups: list[tuple[str, list[dict[str, Any]]]]) -> str:
    data = {"groups": [{"name": n, "rules": r} for n, r in groups]}
    return header + yamltext.dump(data)


def render_recording_rules() -> str:
    return _dump(
        "# Recording rules over the gateway's and the engines' series (cardinal render).\n",
        [("gateway", gateway_rules()), ("engine", engine_rules())],
    )


def render_plan_rules(plan: Mapping[str, Any]) -> str:
    """The plan-dependent rules: its numbers and the SLO miss ratios at its SLOs."""
    fleet = fleet_from_plan(plan)
    header = (
        f"# The plan's numbers and SLOs for {fleet.model_name} {fleet.quant} on {fleet.replicas} x "
        f"{fleet.gpu} (cardinal render).\n"
        "# SLOs are counted at the largest histogram bucket at or below them.\n"
    )
    return _dump(header, [("plan", plan_rules(fleet)), ("slo", slo_rules(fleet))])


def render_alert_rules() -> str:
    return _dump(
        "# Alerts (cardinal render): they read only recording rules and gateway_backend_up.\n",
        [("alerts", alert_rules())],
    )
