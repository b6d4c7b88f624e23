"""SGLang command lines and LeaderWorkerSet manifests for a plan's at-scale layout (`cardinal plan`
writes `at_scale` for DeepSeek-style MoE models): one EP group per LeaderWorkerSet group, a node per
pod, prefill and decode groups apart for a PD layout, with the SGLang router in front of them.

Flags as `python/sglang/srt/server_args.py` names them (SGLang 0.5; tests/test_render_sglang.py
holds the list)."""

from __future__ import annotations

import copy
import shlex
from collections.abc import Mapping
from typing import Any

import yaml

from gateway import planfile
from gateway.planner.scale import load_knobs
from gateway.planner.scale_fleet import role_shape
from gateway.render import compose, yamltext
from gateway.render.engine import flag_lines
from gateway.render.errors import RenderError
from gateway.render.fleet import ENGINE_PORT, GATEWAY_PORT, Fleet, fleet_from_plan
from gateway.render.gateway_config import gateway_data, pd_backends, queue_one_batch_per_answering

SGLANG_IMAGE = "lmsysorg/sglang:v0.5.4"
BOOTSTRAP_PORT = 8998  # --disaggregation-bootstrap-port's default: the router leaves it null
LAUNCH = ["python3", "-m", "sglang.launch_server"]  # what every SGLang node runs
DIST_PORT = 20000  # the group's torch.distributed rendezvous on its leader


def at_scale_layout(plan: Mapping[str, Any]) -> dict[str, Any] | None:
    """The plan's cheapest at-scale layout, or None when the plan has none."""
    scale = planfile.of(plan).data.get("at_scale")
    if not scale:
        return None
    layouts = scale.get("layouts") or []
    if not layouts:
        raise RenderError(
            "`at_scale.layouts` is empty: no EP or PD layout meets the SLOs",
            field="at_scale.layouts",
        )
    return layouts[0]


def sglang_args(fleet: Fleet, layout: Mapping[str, Any], *, role: str) -> list[str]:
    """`python -m sglang.launch_server` flags for one node of a group; `role` is ep (prefill and
    decode together), prefill or decode. Multi-node groups read their rank from the environment
    LeaderWorkerSet sets (LWS_LEADER_ADDRESS, LWS_GROUP_SIZE, LWS_WORKER_INDEX)."""
    if role not in ("ep", "prefill", "decode"):
        raise RenderError(f"unknown SGLang role {role!r}", field="at_scale.layouts.kind")
    gpus = layout["prefill_gpus_per_group"] if role != "decode" else layout["decode_gpus_per_group"]
    per_node = load_knobs().gpus_per_node
    args = ["--model-path", fleet.checkpoint.repo, "--served-model-name", fleet.model]
    args += ["--host", "0.0.0.0", "--port", str(ENGINE_PORT), "--trust-remote-code"]
    args += ["--tp-size", str(gpus), "--dp-size", str(gpus), "--enable-dp-attention"]
    args += ["--ep-size", str(gpus), "--moe-a2a-backend", "deepep"]
    args += ["--deepep-mode", {"ep": "auto", "prefill": "normal", "decode": "low_latency"}[role]]
    args += ["--enable-eplb", "--ep-num-redundant-experts", str(load_knobs().redundant_experts)]
    args += ["--moe-dense-tp-size", "1", "--enable-dp-lm-head", "--enable-two-batch-overlap"]
    args += ["--mem-fraction-static", f"{load_knobs().memory_utilization:g}"]
    if role != "prefill":
        args += ["--max-running-requests", str(layout["batch_per_gpu"] * gpus)]
    if layout["mtp"] and role != "prefill":
        args += ["--speculative-algorithm", "NEXTN", "--speculative-num-steps", "1"]
        args += ["--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "2"]
    if role != "ep":
        args += ["--disaggregation-mode", role]
        args += ["--disaggregation-bootstrap-port", str(BOOTSTRAP_PORT)]
    if gpus > per_node:
        args += ["--nnodes", str(gpus // per_node), "--node-rank", "$(LWS_WORKER_INDEX)"]
        args += ["--dist-init-addr", f"$(LWS_LEADER_ADDRESS):{DIST_PORT}"]
    return [*args, "--enable-metrics"]


def render_sglang(
    plan: Mapping[str, Any], *, image: compose.GatewayImage = compose.BUILT
) -> dict[str, str]:
    """`sglang/`: a launch script per role, a LeaderWorkerSet manifest, the Cardinal gateway's
    config over the groups' leaders (PD: paired as SGLang's router pairs them), a Compose file
    when every group is one node (`image`: the gateway's, as seen from the output), or
    nothing when the plan has no at-scale layout."""
    layout = at_scale_layout(plan)
    if layout is None:
        return {}
    fleet = fleet_from_plan(plan)
    roles = _roles(layout)
    files = {f"sglang/{role}.sh": _script(fleet, layout, role) for role in roles}
    files["sglang/leaderworkerset.yaml"] = _manifests(fleet, layout, roles)
    files["sglang/gateway.yaml"] = _gateway_yaml(plan, layout)
    if layout["kind"] == "pd":
        files["sglang/router.sh"] = _router(_leaders(plan, layout, compose=False))
    per_node = load_knobs().gpus_per_node
    if max(layout["prefill_gpus_per_group"], layout["decode_gpus_per_group"]) <= per_node:
        files["sglang/docker-compose.yml"] = _compose(plan, layout, image=image.below())
    return files


def _roles(layout: Mapping[str, Any]) -> list[str]:
    return ["ep"] if layout["kind"] == "ep" else ["prefill", "decode"]


def _leaders(
    plan: Mapping[str, Any], layout: Mapping[str, Any], *, compose: bool
) -> list[tuple[str, str, int]]:
    """(role, host, in-flight requests) of every group's leader. LeaderWorkerSet names group
    g's leader pod `<set>-<g>` in the set's own headless Service `<set>`; Compose names the
    service `<set>-<g>`."""
    prompt = planfile.of(plan).workload.prompt_tokens
    out = []
    for role in _roles(layout):
        shape = role_shape(layout, role, prompt_tokens=prompt)
        for g in range(shape.groups):
            host = f"sglang-{role}-{g}" + ("" if compose else f".sglang-{role}")
            out.append((role, host, shape.in_flight))
    return out


def _gateway_data(
    plan: Mapping[str, Any], layout: Mapping[str, Any], *, compose: bool
) -> dict[str, Any]:
    """The Cardinal gateway over the layout's group leaders: engine-aware routing on SGLang's
    metrics, PD requests paired (bootstrap host, port and room), the queue one full batch of
    every answering group."""
    leaders = _leaders(plan, layout, compose=compose)
    data = gateway_data(
        fleet_from_plan(plan),
        [f"http://{host}:{ENGINE_PORT}" for _, host, _ in leaders],
        listen=f"0.0.0.0:{GATEWAY_PORT}",
        names=[host.split(".", 1)[0] for _, host, _ in leaders],
        slots=[n for _, _, n in leaders],
    )
    if layout["kind"] == "pd":
        roles = [role for role, _, _ in leaders]
        pd_backends(data, roles, bootstrap_ports=[BOOTSTRAP_PORT] * roles.count("prefill"))
    queue_one_batch_per_answering(data)
    return data


def _gateway_yaml(plan: Mapping[str, Any], layout: Mapping[str, Any]) -> str:
    header = (
        f"# Cardinal gateway for {layout['layout']} on {layout['gpu']}: the groups' leaders by\n"
        "# the names sglang/leaderworkerset.yaml gives them. Written by `cardinal render`; run it\n"
        "# with `cardinal serve --config sglang/gateway.yaml`.\n"
    )
    return header + yaml.safe_dump(_gateway_data(plan, layout, compose=False), sort_keys=False)


def _compose(
    plan: Mapping[str, Any], layout: Mapping[str, Any], *, image: compose.GatewayImage
) -> str:
    """One service per group (each one node of 8 GPUs, numbered across the file as if one host
    held them all: split it per host), the gateway in front, Redis for its limits."""
    fleet = fleet_from_plan(plan)
    per_node = load_knobs().gpus_per_node
    services: dict[str, Any] = {}
    for i, (role, host, _) in enumerate(_leaders(plan, layout, compose=True)):
        devices = [str(i * per_node + k) for k in range(per_node)]
        services[host] = {
            "image": SGLANG_IMAGE,
            "command": [*LAUNCH, *sglang_args(fleet, layout, role=role)],
            **compose.gpu_engine(devices),
            # DP ranks share memory through /dev/shm; DeepEP pins its buffers (memlock)
            "ipc": "host",
            "ulimits": {"memlock": -1},
            "healthcheck": compose.http_check(
                f"http://127.0.0.1:{ENGINE_PORT}/health", start_s=compose.LOADING_S
            ),
        }
    gateway = compose.gateway_service(image, "gateway", list(services), replicas=1)
    services["gateway"] = {**gateway, "ports": [f"{GATEWAY_PORT}:{GATEWAY_PORT}"]}
    services["redis"] = compose.redis_service()
    data = _gateway_data(plan, layout, compose=True)
    data["limits"] = {"redis_url": compose.REDIS_URL}
    body = {
        "name": "cardinal-sglang",
        "services": services,
        "configs": {"gateway": compose.inline_config(yaml.safe_dump(data, sort_keys=False))},
        "volumes": {"models": {}},
    }
    header = (
        f"# {fleet.model_name} {fleet.quant}: {layout['layout']} on {layout['gpu']} "
        f"({layout['gpus']} GPUs), SGLang groups behind the Cardinal gateway.\n"
        "# Written by `cardinal render`; API: http://localhost:8080. Each SGLang service is one\n"
        "# 8-GPU node: run them on as many hosts (GPUs are numbered across the file).\n"
    )
    return header + yamltext.dump(body)


def _router(leaders: list[tuple[str, str, int]]) -> str:
    """SGLang's PD router: it sends each request to a prefill and a decode worker as a pair
    (bootstrap host, port and room) and streams the decode worker's answer back."""
    workers = [
        f"    --{role} http://{host}:{ENGINE_PORT}"
        + (f" {BOOTSTRAP_PORT}" if role == "prefill" else "")
        for role, host, _ in leaders
    ]
    return (
        "#!/bin/sh\n"
        "# Written by `cardinal render`: SGLang's router in front of the prefill and decode\n"
        "# groups' leaders (as sglang/leaderworkerset.yaml names them), an alternative to\n"
        "# sglang/gateway.yaml's pairing in the Cardinal gateway.\n"
        "exec python3 -m sglang_router.launch_router --pd-disaggregation \\\n"
        + "".join(f"{w} \\\n" for w in workers)
        + '    --host 0.0.0.0 --port "${PORT:-8001}"\n'
    )


def _script(fleet: Fleet, layout: Mapping[str, Any], role: str) -> str:
    words = [
        shlex.quote(a) if not a.startswith("$(") else a
        for a in sglang_args(fleet, layout, role=role)
    ]
    body = " \\\n    ".join([" ".join(LAUNCH), *flag_lines(words)])
    body = body.replace("$(LWS_WORKER_INDEX)", '"${LWS_WORKER_INDEX:-0}"').replace(
        "$(LWS_LEADER_ADDRESS)", "${LWS_LEADER_ADDRESS:?the group leader address}"
    )
    return (
        "#!/bin/sh\n"
        f"# {fleet.model_name} {fleet.quant}: {layout['layout']} on {layout['gpu']}\n"
        f"# Written by `cardinal render`: one node of a {role} group; run it on every node of the\n"
        "# group (LWS_WORKER_INDEX 0 on the leader) or let sglang/leaderworkerset.yaml do it.\n"
        f"exec {body}\n"
    )


def _manifests(fleet: Fleet, layout: Mapping[str, Any], roles: list[str]) -> str:
    per_node = load_knobs().gpus_per_node
    docs: list[dict[str, Any]] = []
    for role in roles:
        gpus = (
            layout["decode_gpus_per_group"]
            if role == "decode"
            else layout["prefill_gpus_per_group"]
        )
        groups = layout["decode_groups"] if role == "decode" else layout["prefill_groups"]
        name = f"sglang-{role}"
        container = {
            "name": "sglang",
            "image": SGLANG_IMAGE,
            "command": [*LAUNCH],
            "args": sglang_args(fleet, layout, role=role),
            "ports": [{"containerPort": ENGINE_PORT}],
            "resources": {"limits": {"nvidia.com/gpu": min(gpus, per_node)}},
        }
        # host networking for the RDMA NICs; ClusterFirstWithHostNet keeps cluster DNS, which
        # the workers need to find LWS_LEADER_ADDRESS
        pod = {
            "spec": {
                "hostNetwork": True,
                "dnsPolicy": "ClusterFirstWithHostNet",
                "containers": [container],
            }
        }
        docs.append(
            {
                "apiVersion": "leaderworkerset.x-k8s.io/v1",
                "kind": "LeaderWorkerSet",
                "metadata": {"name": name},
                "spec": {
                    "replicas": groups,
                    "leaderWorkerTemplate": {
                        "size": max(1, gpus // per_node),
                        "restartPolicy": "RecreateGroupOnPodRestart",
                        "leaderTemplate": {
                            "metadata": {"labels": {"role": "leader"}},
                            **copy.deepcopy(pod),
                        },
                        "workerTemplate": copy.deepcopy(pod),
                    },
                },
            }
        )
    header = (
        f"# {fleet.model_name} {fleet.quant}: {layout['layout']} on {layout['gpu']} "
        f"({layout['gpus']} GPUs). Written by `cardinal render`; needs the LeaderWorkerSet CRD.\n"
        "# Each set gets a headless Service of its name: group g's leader is <set>-<g>.<set>.\n"
    )
    return header + yaml.safe_dump_all(docs, sort_keys=False)
