"""`gateway.yaml` for the plan's replicas, in the format `gateway.server.config` loads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from gateway import planfile
from gateway.planfile import PlanFile
from gateway.render.fleet import ENGINE_PORT, GATEWAY_PORT, Fleet, fleet_from_plan

SERVE_SLOTS = 64  # a replica's in-flight requests when the plan names no batch


def engine_urls(fleet: Fleet, *, host: str = "engine") -> list[str]:
    return [f"http://{host}-{i}:{ENGINE_PORT}" for i in range(fleet.replicas)]


def gateway_data(
    fleet: Fleet, urls: Sequence[str], *, listen: str, redis_url: str | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": listen,
        "backends": [
            {
                "name": f"{_host(u)}",
                "url": u,
                "model": fleet.model,
                "max_inflight": fleet.max_inflight,
            }
            for u in urls
        ],
        # engine-aware: both vLLM and llama.cpp publish queue depth and KV usage to route on
        "routing": {"policy": "engine_aware"},
        "health": {"path": "/health"},
        "admission": {
            # one more full batch per replica may wait; beyond that a client is better told 429
            "queue_size": fleet.max_inflight * len(urls),
            # a request queued longer than the TTFT SLO has already missed it
            "queue_timeout_s": fleet.ttft_slo_s,
        },
    }
    if redis_url:
        # replicas share per-key limits there (keys go under `auth.keys`)
        data["limits"] = {"redis_url": redis_url}
    return data


def serve_data(
    plan: PlanFile | Mapping[str, Any],
    *,
    urls: Sequence[str],
    listen: str,
    slots: Sequence[int | None] = (),
) -> dict[str, Any]:
    """The gateway config `cardinal serve --plan` runs, for `gateway.server.config.parse`: one
    backend per URL with the plan's per-replica concurrency, or its own where `slots` gives it."""
    p = planfile.of(plan)
    batch = p.replica_concurrency or SERVE_SLOTS
    own = list(slots) or [None] * len(urls)
    backends = [
        {"name": f"card-{i}", "url": url, "model": p.model, "max_inflight": n or batch}
        for i, (url, n) in enumerate(zip(urls, own, strict=True))
    ]
    return {"listen": listen, "backends": backends}


def render_gateway_config(
    plan: Mapping[str, Any],
    *,
    urls: Sequence[str] | None = None,
    listen: str = f"0.0.0.0:{GATEWAY_PORT}",
    redis_url: str | None = None,
) -> str:
    """`gateway.yaml` over `urls` (default: the replicas as `engine-i:8000`)."""
    fleet = fleet_from_plan(plan)
    data = gateway_data(fleet, urls or engine_urls(fleet), listen=listen, redis_url=redis_url)
    header = (
        f"# Cardinal gateway for {fleet.model_name} {fleet.quant}: {len(data['backends'])} "
        f"backends of {fleet.max_inflight} in-flight requests each.\n"
        "# Written by `cardinal render`; run it with `cardinal serve --config gateway.yaml`.\n"
        "# admission.queue_size: one full batch more per backend; queue_timeout_s: the TTFT SLO.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
