"""`cardinal render` of an at-scale plan: SGLang launch scripts per role, LeaderWorkerSet
manifests, the PD router, every flag one SGLang documents."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.server import config
from tests.test_render_tools import compose_validator

# Every flag SGLang's `launch_server` registers that Cardinal writes, as spelled in
# sgl-project/sglang python/sglang/srt/server_args.py (0.5 series and main): each is a dataclass
# field turned into --kebab-case by the argument parser.
SGLANG_FLAGS = {
    "--model-path", "--served-model-name", "--host", "--port", "--trust-remote-code",
    "--tp-size", "--dp-size", "--enable-dp-attention", "--ep-size", "--moe-a2a-backend",
    "--deepep-mode", "--enable-eplb", "--ep-num-redundant-experts", "--moe-dense-tp-size",
    "--enable-dp-lm-head", "--enable-two-batch-overlap", "--mem-fraction-static",
    "--max-running-requests", "--speculative-algorithm", "--speculative-num-steps",
    "--speculative-eagle-topk", "--speculative-num-draft-tokens", "--disaggregation-mode",
    "--disaggregation-bootstrap-port", "--nnodes", "--node-rank", "--dist-init-addr",
    "--enable-metrics",
}  # fmt: skip
# values a choice flag takes there
CHOICES = {
    "--moe-a2a-backend": {"none", "deepep"},
    "--deepep-mode": {"auto", "normal", "low_latency"},
    "--disaggregation-mode": {"null", "prefill", "decode"},
    "--speculative-algorithm": {"EAGLE", "EAGLE3", "NEXTN"},
}
PLAN = [
    "plan", "--model", "deepseek-v3", "--quant", "fp8", "--gpu", "h100-sxm",
    "--target-qps", "75", "--prompt-tokens", "512", "--output-tokens", "256",
]  # fmt: skip


def _render(tmp_path: Path, *extra: str) -> dict[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    plan = tmp_path / "fleet.yaml"
    assert main([*PLAN, *extra, "-o", str(plan)]) == 0
    out = tmp_path / "out"
    assert main(["render", str(plan), "-o", str(out)]) == 0
    return {
        str(p.relative_to(out)): p.read_text() for p in (out / "sglang").glob("*") if p.is_file()
    }


def _flags(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, a in enumerate(args):
        if a.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            out[a] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def _containers(manifest: str) -> dict[str, list[str]]:
    docs = list(yaml.safe_load_all(manifest))
    return {
        d["metadata"]["name"]: d["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"][
            "containers"
        ][0]["args"]
        for d in docs
        if d["kind"] == "LeaderWorkerSet"
    }


def test_pd_plan_renders_prefill_and_decode_groups_and_the_router(tmp_path: Path) -> None:
    files = _render(tmp_path, "--layout", "pd", "--mtp", "on")
    assert set(files) == {
        "sglang/prefill.sh",
        "sglang/decode.sh",
        "sglang/router.sh",
        "sglang/leaderworkerset.yaml",
        "sglang/gateway.yaml",
    }  # fmt: skip  (groups of two H100 nodes: no Compose file, a Compose host is one node)
    roles = _containers(files["sglang/leaderworkerset.yaml"])
    prefill, decode = _flags(roles["sglang-prefill"]), _flags(roles["sglang-decode"])
    assert prefill["--disaggregation-mode"] == "prefill" and prefill["--deepep-mode"] == "normal"
    assert decode["--disaggregation-mode"] == "decode"
    assert decode["--deepep-mode"] == "low_latency"
    assert decode["--speculative-algorithm"] == "NEXTN" and "--speculative-algorithm" not in prefill
    assert "--pd-disaggregation" in files["sglang/router.sh"]


def test_every_flag_written_is_one_sglang_registers(tmp_path: Path) -> None:
    for extra in (["--layout", "pd", "--mtp", "on"], ["--layout", "ep"]):
        files = _render(tmp_path / extra[1], *extra)
        for args in _containers(files["sglang/leaderworkerset.yaml"]).values():
            flags = _flags(args)
            assert set(flags) <= SGLANG_FLAGS, set(flags) - SGLANG_FLAGS
            for flag, allowed in CHOICES.items():
                if flag in flags:
                    assert flags[flag] in allowed, (flag, flags[flag])
            tp, dp, ep = (int(flags[f] or 0) for f in ("--tp-size", "--dp-size", "--ep-size"))
            assert tp == dp == ep  # DP attention over the whole EP group


def test_a_multi_node_group_is_one_lws_group_of_nodes(tmp_path: Path) -> None:
    files = _render(tmp_path, "--layout", "pd")
    docs = [d for d in yaml.safe_load_all(files["sglang/leaderworkerset.yaml"])]
    for d in docs:
        if d["kind"] != "LeaderWorkerSet":
            continue
        args = _flags(
            d["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]["args"]
        )
        size = d["spec"]["leaderWorkerTemplate"]["size"]
        assert size * 8 == int(args["--tp-size"] or 0)
        if size > 1:
            assert args["--nnodes"] == str(size) and args["--node-rank"] == "$(LWS_WORKER_INDEX)"
        # LeaderWorkerSet makes a headless Service of the set's name itself; the workers find
        # their leader through cluster DNS, which host networking keeps only with this policy
        for template in ("leaderTemplate", "workerTemplate"):
            spec = d["spec"]["leaderWorkerTemplate"][template]["spec"]
            assert spec["hostNetwork"] and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert not [d for d in docs if d["kind"] == "Service"]


def _gateway(files: dict[str, str], name: str) -> Any:
    return config.parse(yaml.safe_load(files[name]), env={})


def test_the_gateway_pairs_every_prefill_and_decode_leader(tmp_path: Path) -> None:
    """sglang/gateway.yaml is a config the gateway loads: each group's leader once, by the name
    LeaderWorkerSet gives it, prefill workers with their bootstrap port; SGLang's router lists
    the same workers."""
    plan = tmp_path / "fleet.yaml"
    assert main([*PLAN, "--layout", "pd", "--target-qps", "400", "-o", str(plan)]) == 0
    layout = yaml.safe_load(plan.read_text())["at_scale"]["layouts"][0]
    out = tmp_path / "out"
    assert main(["render", str(plan), "-o", str(out)]) == 0
    files = {f"sglang/{p.name}": p.read_text() for p in (out / "sglang").iterdir()}
    gw = _gateway(files, "sglang/gateway.yaml")
    prefill = [b for b in gw.backends if b.role == "prefill"]
    decode = [b for b in gw.backends if b.role == "decode"]
    assert (len(prefill), len(decode)) == (layout["prefill_groups"], layout["decode_groups"])
    assert len(decode) > 1  # several groups of a role, each its own leader
    hosts = [f"sglang-prefill-{g}.sglang-prefill" for g in range(len(prefill))]
    assert [b.url for b in prefill] == [f"http://{h}:8000" for h in hosts]
    assert all(b.bootstrap_port == 8998 for b in prefill)
    assert all(b.max_inflight == layout["batch_per_gpu"] * layout["decode_gpus_per_group"]
               for b in decode)  # fmt: skip
    router = files["sglang/router.sh"]
    for b in gw.backends:
        assert f"--{b.role} {b.url}" in router


def test_one_node_groups_get_a_compose_file_with_the_gateway_in_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "fleet.yaml"
    h200 = [*PLAN[:6], "h200", *PLAN[7:]]
    assert main([*h200, "--layout", "pd", "-o", str(plan)]) == 0
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["render", str(plan), "-o", str(out)]) == 0
    tp_gpus = yaml.safe_load(plan.read_text())["fleet"]["gpus"]
    said = capsys.readouterr().out.splitlines()[-1]
    assert said.startswith("the plan's cheapest layout is at scale") and "deploy sglang/" in said
    assert f"({tp_gpus} GPUs)" in said
    data = yaml.safe_load((out / "sglang" / "docker-compose.yml").read_text())
    compose_validator().validate(data)
    engines = {n: s for n, s in data["services"].items() if n.startswith("sglang-")}
    assert set(engines) == {"sglang-prefill-0", "sglang-decode-0"}
    devices = [
        d for s in engines.values() for d in s["deploy"]["resources"]["reservations"]["devices"]
    ]
    assert sorted(i for d in devices for i in d["device_ids"]) == sorted(map(str, range(16)))
    assert set(data["services"]["gateway"]["depends_on"]) == {*engines, "redis"}
    content = data["configs"]["gateway"]["content"].replace("$$", "$")
    gw = config.parse(yaml.safe_load(content), env={})
    assert [(b.role, b.url) for b in gw.backends] == [
        ("prefill", "http://sglang-prefill-0:8000"), ("decode", "http://sglang-decode-0:8000")
    ]  # fmt: skip
    assert gw.limits.redis_url


@pytest.mark.parametrize("script", ["sglang/prefill.sh", "sglang/decode.sh", "sglang/router.sh"])
def test_scripts_are_valid_shell(tmp_path: Path, script: str) -> None:
    files = _render(tmp_path, "--layout", "pd")
    path = tmp_path / "s.sh"
    path.write_text(files[script])
    subprocess.run(["sh", "-n", str(path)], check=True)


def test_a_plan_without_at_scale_renders_no_sglang_files(tmp_path: Path) -> None:
    files = _render(tmp_path, "--layout", "tp")
    assert files == {}


# `vllm serve` flags Cardinal writes for an at-scale layout, as vLLM's engine arguments name
# them (vllm/engine/arg_utils.py, vllm/config/parallel.py; v0.11 and later)
VLLM_FLAGS = {
    "--served-model-name", "--trust-remote-code", "--host", "--port", "--tensor-parallel-size",
    "--data-parallel-size", "--data-parallel-size-local", "--enable-expert-parallel",
    "--all2all-backend", "--enable-dbo", "--enable-eplb", "--eplb-config", "--max-num-seqs",
    "--speculative-config", "--kv-transfer-config", "--data-parallel-address",
    "--data-parallel-rpc-port", "--data-parallel-start-rank", "--headless",
}  # fmt: skip
VLLM_ALL2ALL = {"deepep_low_latency", "deepep_high_throughput"}


def test_vllm_equivalents_use_flags_vllm_registers(tmp_path: Path) -> None:
    import json
    import re

    plan = tmp_path / "fleet.yaml"
    assert main([*PLAN, "--layout", "pd", "--mtp", "on", "-o", str(plan)]) == 0
    assert main(["render", str(plan), "-o", str(tmp_path / "out")]) == 0
    for role in ("prefill", "decode"):
        text = (tmp_path / "out" / "vllm-ep" / f"{role}.sh").read_text()
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
        assert flags <= VLLM_FLAGS, flags - VLLM_FLAGS
        backend = re.search(r"--all2all-backend (\S+)", text)
        assert backend and backend.group(1) in VLLM_ALL2ALL
        kv = re.search(r"--kv-transfer-config '([^']+)'", text)
        assert kv and json.loads(kv.group(1))["kv_connector"] == "NixlConnector"
        spec = re.search(r"--speculative-config '([^']+)'", text)
        assert (spec is not None) == (role == "decode")
        if spec:
            assert json.loads(spec.group(1)) == {
                "method": "deepseek_mtp",
                "num_speculative_tokens": 1,
            }
        subprocess.run(["sh", "-n", str(tmp_path / "out" / "vllm-ep" / f"{role}.sh")], check=True)
