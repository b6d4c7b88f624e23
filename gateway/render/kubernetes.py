"""Kubernetes manifests: a Deployment, Service and model-cache PersistentVolumeClaim per engine
replica (GPU limits, node affinity to the plan's GPU model, readiness on the engine's /health), the
gateway Deployment + Service + HorizontalPodAutoscaler and its ConfigMap, Redis for the gateway
pods' shared per-key limits, and Prometheus: scrape annotations on every pod and a ConfigMap with
the scrape config that reads them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway import planfile
from gateway.render import yamltext
from gateway.render.compose import BUILT, IMAGES, LOADING_S, GatewayImage
from gateway.render.engine import engine_args, engine_image
from gateway.render.fleet import ENGINE_PORT, GATEWAY_PORT, Fleet, fleet_from_plan
from gateway.render.gateway_config import render_gateway_config
from gateway.render.prometheus import ENGINE_NAMES

PART_OF = {"app.kubernetes.io/part-of": "cardinal"}
REDIS_PORT = 6379
# NVIDIA's GPU feature discovery (GPU operator) labels a node `nvidia.com/gpu.product` with the
# name `nvidia-smi --query-gpu=name` prints, spaces as '-'. Names as nvidia-smi prints them per
# catalog GPU (several where the boards differ: AWS's A10G is an A10). A GPU missing here gets no
# affinity and a line in the manifest's header saying so.
GPU_PRODUCT = {
    "a10": ("NVIDIA A10", "NVIDIA A10G"),
    "l4": ("NVIDIA L4",),
    "l40": ("NVIDIA L40",),
    "l40s": ("NVIDIA L40S",),
    "a100-40gb": ("NVIDIA A100-SXM4-40GB",),
    "a100-80gb-pcie": ("NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-80GB"),
    "a100-80gb-sxm": ("NVIDIA A100-SXM4-80GB",),
    "h100-pcie": ("NVIDIA H100 PCIe",),
    "h100-sxm": ("NVIDIA H100 80GB HBM3",),
    "h800": ("NVIDIA H800",),
    "h20": ("NVIDIA H20",),
    "h200": ("NVIDIA H200",),
    "b200": ("NVIDIA B200",),
    "rtx-a6000": ("NVIDIA RTX A6000",),
    "rtx-3090": ("NVIDIA GeForce RTX 3090",),
    "rtx-4090": ("NVIDIA GeForce RTX 4090",),
    "rtx-5090": ("NVIDIA GeForce RTX 5090",),
}
# the model cache: the checkpoint with room for the tokenizer, configs and a partial download
CACHE_FACTOR, CACHE_SPARE_GIB = 1.2, 10


def render_kubernetes(
    plan: Mapping[str, Any], *, namespace: str = "cardinal", image: GatewayImage = BUILT
) -> str:
    """All manifests as one multi-document YAML (`kubectl apply -f kubernetes.yaml`)."""
    fleet = fleet_from_plan(plan)
    cache_gib = math.ceil(planfile.of(plan).memory["weights_gib"] * CACHE_FACTOR) + CACHE_SPARE_GIB
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    ]
    for i in range(fleet.replicas):
        docs += [
            _model_cache(f"engine-{i}-models", namespace, cache_gib),
            _engine_deployment(fleet, i, namespace),
            _service(f"engine-{i}", namespace, ENGINE_PORT, _engine_labels(i)),
        ]
    docs += [
        _redis_deployment(namespace),
        _service("redis", namespace, REDIS_PORT, {"app.kubernetes.io/name": "redis"}),
        _gateway_config(plan, namespace),
        _gateway_deployment(namespace, image.name),
        _service("gateway", namespace, GATEWAY_PORT, {"app.kubernetes.io/name": "gateway"}),
        _autoscaler(namespace),
        _scrape_config(namespace),
    ]
    return _header(fleet, image, cache_gib) + yamltext.dump_all(docs)


def _header(fleet: Fleet, image: GatewayImage, cache_gib: int) -> str:
    lines = [
        f"{fleet.model_name} {fleet.quant}: {fleet.replicas} engine replicas of "
        f"{fleet.gpus_per_replica} x {fleet.gpu}, the gateway autoscaled (cardinal render).",
        f"Each engine keeps its model cache on a {cache_gib} Gi PersistentVolumeClaim (the "
        "cluster's default StorageClass).",
    ]
    if image.context is not None:
        lines.append(
            f"The gateway runs {image.name}: build it (docker build -t {image.name} "
            f"{image.context}) and push it where the cluster pulls from, or render with --image."
        )
    if fleet.gpu not in GPU_PRODUCT:
        lines.append(
            f"No nvidia.com/gpu.product label is known for {fleet.gpu}: the engines are not "
            "pinned to a GPU model; add a nodeSelector for your nodes."
        )
    return "".join(f"# {line}\n" for line in lines)


def _engine_labels(i: int) -> dict[str, str]:
    return {"app.kubernetes.io/name": "engine", "cardinal/replica": str(i)}


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


def _model_cache(name: str, namespace: str, gib: int) -> dict[str, Any]:
    """A replica's model cache, kept across restarts (a 671B checkpoint downloads for hours)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(name, namespace),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": f"{gib}Gi"}},
        },
    }


def _gpu_affinity(gpu: str) -> dict[str, Any]:
    """Engines only on nodes with the plan's GPU model (none when no label is known)."""
    products = GPU_PRODUCT.get(gpu)
    if products is None:
        return {}
    term = {
        "key": "nvidia.com/gpu.product",
        "operator": "In",
        "values": [p.replace(" ", "-") for p in products],
    }
    required = {"nodeSelectorTerms": [{"matchExpressions": [term]}]}
    return {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    }


def _engine_deployment(fleet: Fleet, i: int, namespace: str) -> dict[str, Any]:
    labels = _engine_labels(i)
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
                    **_gpu_affinity(fleet.gpu),
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "cache",
                            "persistentVolumeClaim": {"claimName": f"engine-{i}-models"},
                        },
                        # tensor-parallel workers exchange tensors through shared memory
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                    ],
                },
            },
        },
    }


def _service(name: str, namespace: str, port: int, selector: dict[str, str]) -> dict[str, Any]:
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
        # the gateway pods share their per-key limits in Redis, so N pods are not N x the limit
        "data": {
            "gateway.yaml": render_gateway_config(
                plan, redis_url=f"redis://redis.{namespace}.svc:{REDIS_PORT}/0"
            )
        },
    }


def _redis_deployment(namespace: str) -> dict[str, Any]:
    """Redis for the limits: short-lived counters, so no volume and no snapshots."""
    labels = {"app.kubernetes.io/name": "redis"}
    container = {
        "name": "redis",
        "image": IMAGES["redis"],
        "args": ["redis-server", "--save", "", "--appendonly", "no"],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
    }
    return _deployment("redis", namespace, labels, replicas=1, pod={"containers": [container]})


def _deployment(
    name: str,
    namespace: str,
    labels: dict[str, str],
    *,
    replicas: int,
    pod: dict[str, Any],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Deployment of `replicas` pods labelled `labels` (and part of Cardinal)."""
    meta: dict[str, Any] = {"labels": {**PART_OF, **labels}}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, **labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": meta, "spec": pod},
        },
    }


def _scrape_config(namespace: str) -> dict[str, Any]:
    """`prometheus.yml` scrape jobs for a Prometheus in the cluster: the annotated pods of this
    namespace, the gateways as job `gateway` and the engines as `engines` (the names the rules
    and dashboards use), with vLLM's and llama.cpp's metric names kept."""
    jobs = [_pod_job("gateway", namespace), {**_pod_job("engines", namespace), **ENGINE_NAMES}]
    text = yamltext.dump({"scrape_configs": jobs})
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta("prometheus-scrape", namespace),
        "data": {"scrape-configs.yml": text},
    }


def _pod_job(job: str, namespace: str) -> dict[str, Any]:
    name = {"gateway": "gateway", "engines": "engine"}[job]
    annotation = "__meta_kubernetes_pod_annotation_prometheus_io_"
    return {
        "job_name": job,
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                "regex": name,
                "action": "keep",
            },
            {"source_labels": [annotation + "scrape"], "regex": "true", "action": "keep"},
            {"source_labels": [annotation + "path"], "target_label": "__metrics_path__"},
            {
                "source_labels": ["__meta_kubernetes_pod_ip", annotation + "port"],
                "regex": "(.+);(.+)",
                "replacement": "$1:$2",
                "target_label": "__address__",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }


def _gateway_deployment(namespace: str, image: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "gateway"}
    container = {
        "name": "gateway",
        "image": image,
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
    return _deployment(
        "gateway",
        namespace,
        labels,
        replicas=2,
        pod={
            "containers": [container],
            "volumes": [{"name": "config", "configMap": {"name": "gateway"}}],
        },
        annotations=_scrape(GATEWAY_PORT),
    )


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
