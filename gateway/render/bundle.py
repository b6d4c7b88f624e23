"""Every deploy file for a plan, as {relative path: text}: what `cardinal render -o DIR` writes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.render.compose import BUILT, GatewayImage, render_compose
from gateway.render.dashboards import (
    render_dashboard_provider,
    render_dashboards,
    render_datasource,
)
from gateway.render.engine import render_engine_script, render_modelfile
from gateway.render.fleet import fleet_from_plan
from gateway.render.gateway_config import render_gateway_config
from gateway.render.kubernetes import render_kubernetes
from gateway.render.nginx import render_nginx
from gateway.render.prometheus import render_prometheus_config, render_scrape_targets
from gateway.render.rules import render_alert_rules, render_plan_rules, render_recording_rules
from gateway.render.sglang import render_sglang
from gateway.render.vllm_ep import render_vllm_ep


def render_monitoring(plan: Mapping[str, Any], *, sim: bool = False) -> dict[str, str]:
    """`monitoring/`: Prometheus config and rules, Grafana provisioning and dashboards."""
    fleet = fleet_from_plan(plan)
    engines = [f"engine-{i}" for i in range(fleet.replicas)]
    gateways = ["gateway"]
    if sim:  # the cards by default, the real engines and their gateway when the gpu profile is up
        engines = [f"card-{i}" for i in range(fleet.replicas)] + engines
        gateways.append("gateway-gpu")
    files = {
        "prometheus/prometheus.yml": render_prometheus_config(
            plan, gateways=gateways, engines=engines
        ),
        "prometheus/rules/gateway.yml": render_recording_rules(),
        "prometheus/rules/plan.yml": render_plan_rules(plan),
        "prometheus/rules/alerts.yml": render_alert_rules(),
        "grafana/provisioning/datasources/prometheus.yml": render_datasource(),
        "grafana/provisioning/dashboards/cardinal.yml": render_dashboard_provider(),
        **{f"grafana/dashboards/{k}": v for k, v in render_dashboards().items()},
    }
    return {f"monitoring/{k}": v for k, v in files.items()}


def render_all(
    plan: Mapping[str, Any], *, sim: bool = False, image: GatewayImage = BUILT
) -> dict[str, str]:
    """All files; `image` is the gateway's (built from a context relative to the output, or
    pulled by name)."""
    return {
        "docker-compose.yml": render_compose(plan, sim=sim, image=image),
        "nginx.conf": render_nginx(plan),
        "gateway.yaml": render_gateway_config(plan),
        "kubernetes.yaml": render_kubernetes(plan, image=image),
        "engine.sh": render_engine_script(plan),
        "Modelfile": render_modelfile(plan),
        "prometheus-targets.yml": render_scrape_targets(plan),
        **render_monitoring(plan, sim=sim),
        **render_sglang(plan, image=image),
        **render_vllm_ep(plan),
    }
