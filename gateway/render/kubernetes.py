"""Kubernetes manifests: a Deployment and Service per engine replica (GPU limits, readiness on the
engine's /health), the gateway Deployment + Service + HorizontalPodAutoscaler, its ConfigMap, and
Prometheus scrape annotations on every pod."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway.render import yamltext
from gateway.render.compose import IMAGES, LOADING_S
from gateway.render.engine import engine_args, engine_image
from gateway.render.fleet import ENGINE_PORT, GATEWAY_PORT, Fleet, fleet_from_plan
from gateway.render.gateway_config import render_gateway_config

PART_OF = {"app.kubernetes.io/part-of": "cardinal"}


def render_kubernetes(plan: Mapping[str, Any], *, namespace: str = "cardinal") -> str:
    """All manifests as one multi-document YAML (`kubectl apply -f kubernetes.yaml`)."""
    fleet = fleet_from_plan(plan)
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    ]
    for i in range(fleet.replicas):
        docs += [_engine_deployment(fleet, i, namespace), _service(f"engine-{i}", namespace, i)]
    docs += [
        _gateway_config(plan, namespace),
        _gateway_deployment(namespace),
        _service("gateway", namespace, None),
        _autoscaler(namespace),
    ]
    head = (
        f"# {fleet.model_name} {fleet.quant}: {fleet.replicas} engine replicas of "
        f"{fleet.gpus_per_replica} x {fleet.gpu}, the gateway autoscaled (cardinal render).\n"
        "# Build and push the gateway image (cardinal:VERSION) to a registry the cluster pulls "
        "from.\n"
    )
    return head + yamltext.dump_all(docs)


def _meta(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {**PART_OF, **labels}}


def _scrape(port: int) -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def _probe(path: str, port: int, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _engine_deployment(fleet: Fleet, i: int, namespace: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "engine", "cardinal/replica": str(i)}
    gpus = str(fleet.gpus_per_replica)
    resources: dict[str, Any] = {"limits": {"nvidia.com/gpu": gpus}}
    if fleet.cpu_ram_gib:  # experts kept in host RAM: the pod must be placed where they fit
        resources["requests"] = {"memory": f"{math.ceil(fleet.cpu_ram_gib * 1.05) + 8}Gi"}
    container = {
        "name": "engine",
        "image": engine_image(fleet),
        "args": engine_args(fleet),
        "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
        "env": [
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}
                },
            }
        ],
        "resources": resources,
        # loading a large model takes minutes: the startup probe waits, then readiness gates traffic
        "startupProbe": _probe("/health", ENGINE_PORT, period=10, failures=LOADING_S // 10),
        "readinessProbe": _probe("/health", ENGINE_PORT, period=5, failures=2),
        "livenessProbe": _probe("/health", ENGINE_PORT, period=15, failures=4),
        "volumeMounts": [
            {"name": "cache", "mountPath": "/root/.cache"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(f"engine-{i}", namespace, **labels),
        "spec": {
            "replicas": 1,
            # the GPUs cannot hold an old and a new engine at once
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**PART_OF, **labels}, "annotations": _scrape(ENGINE_PORT)},
                "spec": {
                    "containers": [container],
                    "volumes": [
                        {"name": "cache", "emptyDir": {}},
                        # tensor-parallel workers exchange tensors through shared memory
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                    ],
                },
            },
        },
    }


def _service(name: str, namespace: str, replica: int | None) -> dict[str, Any]:
    if replica is None:
        selector, port = {"app.kubernetes.io/name": "gateway"}, GATEWAY_PORT
    else:
        selector = {"app.kubernetes.io/name": "engine", "cardinal/replica": str(replica)}
        port = ENGINE_PORT
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": port}],
        },
    }


def _gateway_config(plan: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta("gateway", namespace),
        "data": {"gateway.yaml": render_gateway_config(plan)},
    }


def _gateway_deployment(namespace: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "gateway"}
    container = {
        "name": "gateway",
        "image": IMAGES["cardinal"],
        "args": ["cardinal", "serve", "--config", "/etc/cardinal/gateway.yaml"],
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        # requests make the HPA's CPU percentage mean something
        "resources": {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "readinessProbe": _probe("/readyz", GATEWAY_PORT, period=5, failures=2),
        "livenessProbe": _probe("/healthz", GATEWAY_PORT, period=10, failures=3),
        "volumeMounts": [{"name": "config", "mountPath": "/etc/cardinal", "readOnly": True}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("gateway", namespace, **labels),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": {**PART_OF, **labels},
                    "annotations": _scrape(GATEWAY_PORT),
                },
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": "gateway"}}],
                },
            },
        },
    }


def _autoscaler(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta("gateway", namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"},
            # two at least, so one pod's restart never takes the API down
            "minReplicas": 2,
            "maxReplicas": 10,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }
