"""`docker-compose.yml`: engines (or simulated cards), gateway replicas, nginx, Prometheus, Grafana.

With `sim=True` the default services run the plan's replicas as `cardinal sim` cards, so the fleet
comes up on any Docker host, and the real engines wait behind the `gpu` profile with a gateway of
their own.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import planfile
from gateway.render import yamltext
from gateway.render.engine import engine_args, engine_image
from gateway.render.fleet import ENGINE_PORT, GATEWAY_PORT, VERSION, Fleet, fleet_from_plan
from gateway.render.gateway_config import render_gateway_config
from gateway.render.nginx import DIRECT_PORT, LISTEN_PORT, render_nginx

IMAGES = {
    "cardinal": f"cardinal:{VERSION}",
    "nginx": "nginx:1.27-alpine",
    "prometheus": "prom/prometheus:v2.53.2",
    "grafana": "grafana/grafana:11.2.2",
    "redis": "redis:7.2-alpine",
}
BUILD_DIR = "cardinal-image"  # where `cardinal render` copies the Dockerfile and the source


@dataclass(frozen=True)
class GatewayImage:
    """The image the gateway and simulated cards run: built from `context` (a folder holding the
    repository's Dockerfile, relative to the Compose file), or pulled as `name` when None."""

    name: str = IMAGES["cardinal"]
    context: str | None = BUILD_DIR

    def service(self) -> dict[str, Any]:
        build = {"build": {"context": self.context}} if self.context is not None else {}
        return {"image": self.name, **build, "restart": "unless-stopped"}

    def below(self) -> GatewayImage:
        """The same image seen from a Compose file one folder down."""
        if self.context is None or self.context.startswith("/"):
            return self
        return GatewayImage(self.name, f"../{self.context}")


BUILT = GatewayImage()  # the default: built from the rendered folder's cardinal-image/
GATEWAY_REPLICAS = 2
REDIS_URL = "redis://redis:6379/0"  # the gateway replicas' shared per-key limits
LOADING_S = 900  # a large model downloads and loads for minutes before /health answers


def render_compose(
    plan: Mapping[str, Any],
    *,
    sim: bool = False,
    image: GatewayImage = BUILT,
    monitoring: str = ".",
) -> str:
    """The Compose file; `image` the gateway's, `monitoring` the folder holding `monitoring/`,
    relative to the Compose file."""
    fleet = fleet_from_plan(plan)
    engines = {f"engine-{i}": _engine(fleet, i, gpu_profile=sim) for i in range(fleet.replicas)}
    cards = {f"card-{i}": _card(image) for i in range(fleet.replicas)} if sim else {}
    backends = list(cards or engines)
    services: dict[str, Any] = {
        **cards,
        **engines,
        "gateway": gateway_service(image, "gateway", backends, replicas=GATEWAY_REPLICAS),
    }
    if sim:
        services["gateway-gpu"] = {
            **gateway_service(image, "gateway-gpu", list(engines), replicas=1),
            "profiles": ["gpu"],
            "ports": [f"8090:{GATEWAY_PORT}"],
        }
    services["redis"] = redis_service()
    services |= _monitoring(monitoring)
    configs = {
        "gateway": inline_config(
            render_gateway_config(plan, urls=_urls(backends), redis_url=REDIS_URL)
        ),
        "nginx": inline_config(
            render_nginx(plan, engines=[f"{b}:{ENGINE_PORT}" for b in backends])
        ),
    }
    if sim:
        configs["gateway-gpu"] = inline_config(
            render_gateway_config(plan, urls=_urls(list(engines)), redis_url=REDIS_URL)
        )
        configs["fleet"] = inline_config(planfile.dump(dict(planfile.of(plan).data)))
    data = {
        "name": "cardinal",
        "services": services,
        "configs": configs,
        "volumes": {"models": {}, "prometheus": {}, "grafana": {}},
    }
    return _header(fleet, sim) + yamltext.dump(data)


def _header(fleet: Fleet, sim: bool) -> str:
    what = "simulated cards (cardinal sim)" if sim else f"{fleet.engine} engines"
    lines = [
        f"{fleet.model_name} {fleet.quant} on {fleet.replicas} x {fleet.gpu}: {what}, "
        f"{GATEWAY_REPLICAS} gateways behind nginx (per-key limits shared in Redis), "
        "Prometheus and Grafana.",
        "Written by `cardinal render`; edit the plan and render again rather than this file.",
        f"API: http://localhost:8080 (nginx -> gateways), :{DIRECT_PORT} straight to the backends;",
        "Prometheus :9090, Grafana :3000 (anonymous viewer).",
    ]
    if sim:
        lines.append(
            "`docker compose --profile gpu up` adds the real engines, their gateway on :8090."
        )
    return "".join(f"# {line}\n" for line in lines)


def _command(args: list[str]) -> str | list[str]:
    """One line when no word needs quoting (Compose splits it like a shell), else a list."""
    return " ".join(args) if all(shlex.quote(a) == a for a in args) else args


def _urls(hosts: list[str]) -> list[str]:
    return [f"http://{h}:{ENGINE_PORT}" for h in hosts]


def inline_config(text: str) -> dict[str, str]:
    # Compose interpolates ${VAR} in the whole file, inline configs included: $$ is a literal $
    return {"content": text.replace("$", "$$")}


def http_check(url: str, *, start_s: int) -> dict[str, Any]:
    probe = f"import urllib.request; urllib.request.urlopen('{url}', timeout=2)"
    return {
        "test": ["CMD", "python3", "-c", probe],
        "interval": "10s",
        "timeout": "3s",
        "retries": 3,
        "start_period": f"{start_s}s",
    }


def _card(image: GatewayImage) -> dict[str, Any]:
    command = ["cardinal", "sim", "--plan", "/etc/cardinal/fleet.yaml", "--cards", "1"]
    return {
        **image.service(),
        "command": _command([*command, "--host", "0.0.0.0", "--port", str(ENGINE_PORT)]),
        "configs": [{"source": "fleet", "target": "/etc/cardinal/fleet.yaml"}],
        "healthcheck": http_check(f"http://127.0.0.1:{ENGINE_PORT}/health", start_s=10),
    }


def _engine(fleet: Fleet, i: int, *, gpu_profile: bool) -> dict[str, Any]:
    g = fleet.gpus_per_replica
    # device_ids, not count: with `count` every container would be handed the same first GPUs
    devices = [str(i * g + k) for k in range(g)]
    service: dict[str, Any] = {
        "image": engine_image(fleet),
        **({"profiles": ["gpu"]} if gpu_profile else {}),
        "command": engine_args(fleet),
        **gpu_engine(devices),
    }
    if fleet.is_vllm:
        service["ipc"] = "host"  # tensor-parallel workers share memory through /dev/shm
        service["healthcheck"] = http_check(
            f"http://127.0.0.1:{ENGINE_PORT}/health", start_s=LOADING_S
        )
    else:
        service["healthcheck"] = {
            "test": ["CMD", "curl", "-fsS", f"http://127.0.0.1:{ENGINE_PORT}/health"],
            "interval": "10s",
            "timeout": "3s",
            "retries": 3,
            "start_period": f"{LOADING_S}s",
        }
    return service


def gpu_engine(devices: list[str]) -> dict[str, Any]:
    """What every engine service shares: the token, the model cache, its GPUs, restarts."""
    return {
        "environment": {"HF_TOKEN": "${HF_TOKEN:-}"},
        "volumes": ["models:/root/.cache"],
        "deploy": {
            "resources": {
                "reservations": {
                    "devices": [
                        {"driver": "nvidia", "device_ids": devices, "capabilities": ["gpu"]}
                    ]
                }
            }
        },
        "restart": "unless-stopped",
    }


def gateway_service(
    image: GatewayImage, config: str, backends: list[str], *, replicas: int
) -> dict[str, Any]:
    return {
        **image.service(),
        "command": "cardinal serve --config /etc/cardinal/gateway.yaml",
        "configs": [{"source": config, "target": "/etc/cardinal/gateway.yaml"}],
        "depends_on": {
            **{b: {"condition": "service_started"} for b in backends},
            "redis": {"condition": "service_started"},
        },
        "deploy": {"replicas": replicas},
        "healthcheck": http_check(f"http://127.0.0.1:{GATEWAY_PORT}/healthz", start_s=10),
    }


def redis_service() -> dict[str, Any]:
    # Limits are short-lived counters: nothing to persist, so no volume and no snapshots.
    return {
        "image": IMAGES["redis"],
        "command": "redis-server --save '' --appendonly no",
        "healthcheck": {
            "test": ["CMD", "redis-cli", "ping"],
            "interval": "10s",
            "timeout": "3s",
            "retries": 3,
        },
        "restart": "unless-stopped",
    }


def _monitoring(root: str) -> dict[str, Any]:
    mon = f"{root.rstrip('/')}/monitoring"
    return {
        "nginx": {
            "image": IMAGES["nginx"],
            "configs": [{"source": "nginx", "target": "/etc/nginx/nginx.conf"}],
            "ports": [f"8080:{LISTEN_PORT}", f"{DIRECT_PORT}:{DIRECT_PORT}"],
            "depends_on": {"gateway": {"condition": "service_started"}},
            "restart": "unless-stopped",
        },
        "prometheus": {
            "image": IMAGES["prometheus"],
            "command": [
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                "--web.enable-lifecycle",
            ],
            "volumes": [f"{mon}/prometheus:/etc/prometheus:ro", "prometheus:/prometheus"],
            "ports": ["9090:9090"],
            "restart": "unless-stopped",
        },
        "grafana": {
            "image": IMAGES["grafana"],
            "environment": {
                "GF_AUTH_ANONYMOUS_ENABLED": "true",
                "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": (
                    "/var/lib/grafana/dashboards/fleet-overview.json"
                ),
            },
            "volumes": [
                f"{mon}/grafana/provisioning:/etc/grafana/provisioning:ro",
                f"{mon}/grafana/dashboards:/var/lib/grafana/dashboards:ro",
                "grafana:/var/lib/grafana",
            ],
            "ports": ["3000:3000"],
            "depends_on": {"prometheus": {"condition": "service_started"}},
            "restart": "unless-stopped",
        },
    }
