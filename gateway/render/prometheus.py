"""`prometheus.yml` scraping the gateway and the engines, and a file_sd target list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.render import yamltext
from gateway.render.fleet import ENGINE_PORT, GATEWAY_PORT, fleet_from_plan

RULE_FILES = ("rules/*.yml",)
# prometheus_client (0.26, which vLLM also uses) writes `vllm:x` samples as `vllm_x` when Prometheus
# asks for OpenMetrics, as it does first; renaming them back keeps vLLM's and llama.cpp's
# documented names, which the rules and dashboards use, whichever format a target answered in.
ENGINE_NAMES = {
    "metric_relabel_configs": [
        {
            "source_labels": ["__name__"],
            "regex": f"({engine})_(.+)",
            "target_label": "__name__",
            "replacement": "${1}:${2}",
        }
        for engine in ("vllm", "llamacpp")
    ]
}


def render_prometheus_config(
    plan: Mapping[str, Any],
    *,
    gateways: Sequence[str] = ("gateway",),
    engines: Sequence[str] | None = None,
    static: bool = False,
    interval: str = "5s",
    rule_files: Sequence[str] = RULE_FILES,
) -> str:
    """Scrape the gateways and engines: names looked up in DNS (Compose gives every replica of a
    service an A record), or `static` host:port targets."""
    fleet = fleet_from_plan(plan)
    engines = engines or [fleet.engine_host(i) for i in range(fleet.replicas)]
    data = {
        # LLM requests last seconds: a 15 s default would blur a whole burst into one point
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            _job("gateway", gateways, GATEWAY_PORT, static=static),
            {**_job("engines", engines, ENGINE_PORT, static=static), **ENGINE_NAMES},
        ],
    }
    header = (
        f"# Prometheus for {fleet.model_name} on {fleet.replicas} replicas (cardinal render).\n"
        "# DNS names that do not resolve (a profile that is not up) simply yield no targets.\n"
    )
    return header + yamltext.dump(data)


def _job(name: str, hosts: Sequence[str], port: int, *, static: bool) -> dict[str, Any]:
    if static:
        return {"job_name": name, "static_configs": [{"targets": list(hosts)}]}
    sd = {"names": list(hosts), "type": "A", "port": port, "refresh_interval": "30s"}
    return {"job_name": name, "dns_sd_configs": [sd]}


def render_scrape_targets(plan: Mapping[str, Any]) -> str:
    """file_sd targets for a Prometheus of your own (`file_sd_configs: [{files: [this]}]`)."""
    fleet = fleet_from_plan(plan)
    engines = [f"{fleet.engine_host(i)}:{ENGINE_PORT}" for i in range(fleet.replicas)]
    data = [
        {"targets": [f"gateway:{GATEWAY_PORT}"], "labels": {"job": "gateway"}},
        {"targets": engines, "labels": {"job": "engines", "engine": fleet.engine}},
    ]
    return "# Prometheus file_sd targets (cardinal render).\n" + yamltext.dump(data)
