"""vLLM's equivalents of the SGLang scripts (render/sglang.py) for a plan's at-scale layout: one
node of an EP group as `vllm serve` with data-parallel attention (`--data-parallel-size`) and
`--enable-expert-parallel`, DeepEP all-to-all, dual-batch overlap, EPLB, DeepSeek's MTP as the
speculative config, and NIXL moving the cache from prefill to decode workers. Flags as vLLM's
engine arguments name them (tests/test_render_sglang.py holds the list)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from gateway.planner.scale import load_knobs
from gateway.render.engine import flag_lines
from gateway.render.fleet import ENGINE_PORT, Fleet, fleet_from_plan
from gateway.render.sglang import at_scale_layout

DP_RPC_PORT = 13345  # the head node's data-parallel RPC port (any free port on it)
ALL2ALL = {"ep": "deepep_low_latency", "prefill": "deepep_high_throughput",
           "decode": "deepep_low_latency"}  # fmt: skip


def vllm_ep_args(fleet: Fleet, layout: Mapping[str, Any], *, role: str) -> list[str]:
    """`vllm serve` words for one node of a group, for a shell script; multi-node groups read
    NODE_RANK and LEADER_ADDRESS from the environment (rank 0 serves the API, the others run
    headless)."""
    gpus = layout["decode_gpus_per_group"] if role == "decode" else layout["prefill_gpus_per_group"]
    k = load_knobs()
    local = min(gpus, k.gpus_per_node)
    args = [fleet.checkpoint.repo, "--served-model-name", fleet.model, "--trust-remote-code"]
    args += ["--host", "0.0.0.0", "--port", str(ENGINE_PORT), "--tensor-parallel-size", "1"]
    args += ["--data-parallel-size", str(gpus), "--data-parallel-size-local", str(local)]
    args += ["--enable-expert-parallel", "--all2all-backend", ALL2ALL[role], "--enable-dbo"]
    args += [
        "--enable-eplb",
        "--eplb-config",
        json.dumps({"num_redundant_experts": k.redundant_experts}),
    ]
    if role != "prefill":  # per DP rank in vLLM
        args += ["--max-num-seqs", str(layout["batch_per_gpu"])]
    if layout["mtp"] and role != "prefill":
        spec = {"method": "deepseek_mtp", "num_speculative_tokens": 1}
        args += ["--speculative-config", json.dumps(spec)]
    if role != "ep":
        kv = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
        args += ["--kv-transfer-config", json.dumps(kv)]
    if gpus > local:  # shell words, read from the node's environment (not quoted by _script)
        args += ["--data-parallel-address", '"${LEADER_ADDRESS:?the head node address}"']
        args += ["--data-parallel-rpc-port", str(DP_RPC_PORT)]
        args += ["--data-parallel-start-rank", f'"$((${{NODE_RANK:-0}} * {local}))"']
        args += ['$( [ "${NODE_RANK:-0}" -gt 0 ] && echo --headless )']
    return args


def render_vllm_ep(plan: Mapping[str, Any]) -> dict[str, str]:
    """`vllm-ep/<role>.sh` for the plan's at-scale layout; nothing when it has none."""
    layout = at_scale_layout(plan)
    if layout is None:
        return {}
    fleet = fleet_from_plan(plan)
    roles = ["ep"] if layout["kind"] == "ep" else ["prefill", "decode"]
    return {f"vllm-ep/{role}.sh": _script(fleet, layout, role) for role in roles}


def _script(fleet: Fleet, layout: Mapping[str, Any], role: str) -> str:
    args = vllm_ep_args(fleet, layout, role=role)
    words = [a if a.startswith(('"$', "$(")) else shlex.quote(a) for a in args]
    body = " \\\n    ".join(["vllm serve", *flag_lines(words)])
    return (
        "#!/bin/sh\n"
        f"# {fleet.model_name} {fleet.quant}: {layout['layout']} on {layout['gpu']}, with vLLM\n"
        f"# Written by `cardinal render`: one node of a {role} group (NODE_RANK 0 serves the API;\n"
        "# the others run headless). The plan was fitted to SGLang's figures (sglang/ beside).\n"
        f"exec {body}\n"
    )
