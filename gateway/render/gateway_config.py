"""`gateway.yaml` for the plan's replicas, in the format `gateway.server.config` loads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from gateway.planfile import PlanFile
from gateway.render.fleet import ENGINE_PORT, GATEWAY_PORT, Fleet, fleet_from_plan


def engine_urls(fleet: Fleet, *, host: str = "engine") -> list[str]:
    return [f"http://{host}-{i}:{ENGINE_PORT}" for i in range(fleet.replicas)]


def gateway_data(
    fleet: Fleet,
    urls: Sequence[str],
    *,
    listen: str,
    redis_url: str | None = None,
    names: Sequence[str] = (),
    slots: Sequence[int | None] = (),
) -> dict[str, Any]:
    """The one gateway config a plan's fleet gets, for `gateway.server.config.parse`: a backend
    per URL (named by `names`, default its host) with the replica's concurrency, or its own where
    `slots` gives one; engine-aware routing; admission sized from the plan."""
    own = list(slots) or [None] * len(urls)
    data: dict[str, Any] = {
        "listen": listen,
        "backends": [
            {"name": name, "url": u, "model": fleet.model, "max_inflight": n or fleet.max_inflight}
            for name, u, n in zip(names or [_host(u) for u in urls], urls, own, strict=True)
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


def pd_backends(
    data: dict[str, Any], roles: Sequence[str], *, bootstrap_ports: Sequence[int]
) -> None:
    """Mark gateway_data's backends, in order, as the `roles` (prefill or decode) of a PD fleet:
    named prefill-i and decode-j, each prefill worker with its SGLang bootstrap port (the gateway
    pairs every request across the two, as SGLang's router does)."""
    ports = iter(bootstrap_ports)
    counts = {"prefill": 0, "decode": 0}
    for b, role in zip(data["backends"], roles, strict=True):
        b["name"] = f"{role}-{counts[role]}"
        counts[role] += 1
        b["role"] = role
        if role == "prefill":
            b["bootstrap_port"] = next(ports)


def queue_one_batch_per_answering(data: dict[str, Any]) -> None:
    """The admission queue holds one full batch of every backend that answers: all of them, or
    a PD fleet's decode workers (a prefill worker's slots are prompts, not answers)."""
    answering = [b for b in data["backends"] if b.get("role") != "prefill"]
    data["admission"]["queue_size"] = sum(b["max_inflight"] for b in answering)


def serve_data(
    plan: PlanFile | Mapping[str, Any],
    *,
    urls: Sequence[str],
    listen: str,
    slots: Sequence[int | None] = (),
) -> dict[str, Any]:
    """What `cardinal serve --plan` and `cardinal prove` run: the rendered gateway config
    (gateway_data) over `urls`, the backends named card-0, card-1, ..."""
    fleet = fleet_from_plan(plan)
    names = [f"card-{i}" for i in range(len(urls))]
    return gateway_data(fleet, urls, listen=listen, names=names, slots=slots)


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
