"""`cardinal render`: golden files, gateway.yaml through the gateway's own loader, engine flags
against the engines' documented ones, and the CLI."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import yaml

from gateway import planfile
from gateway.cli import main
from gateway.errors import FieldError
from gateway.render import rules
from gateway.render.bundle import render_all
from gateway.render.engine import llama_server_args, vllm_args
from gateway.render.fleet import fleet_from_plan, scaled
from gateway.render.gateway_config import render_gateway_config, serve_data
from gateway.server import config as gwconfig
from gateway.server import metrics as gwmetrics

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "fleet.yaml").exists())
# `CARDINAL_GOLDEN=update pytest tests/test_render.py` rewrites the expected files
UPDATE = os.environ.get("CARDINAL_GOLDEN") == "update"
# Plan-independent files are checked once, against the committed monitoring/ (test_monitoring).
SHARED = ("monitoring/grafana/", "monitoring/prometheus/rules/gateway.yml", "rules/alerts.yml")

# vLLM's documented `vllm serve` flags and choices for the ones Cardinal sets
# (docs.vllm.ai/en/v0.8.5/serving/engine_args.html and the OpenAI server's --host/--port).
VLLM_FLAGS = {
    "--reasoning-parser", "--served-model-name", "--host", "--port", "--tensor-parallel-size",
    "--pipeline-parallel-size", "--max-num-seqs", "--max-model-len", "--gpu-memory-utilization",
    "--kv-cache-dtype", "--quantization",
}  # fmt: skip
VLLM_CHOICES = {
    "--kv-cache-dtype": {"auto", "fp8", "fp8_e5m2", "fp8_e4m3"},
    "--quantization": {"aqlm", "awq", "fp8", "gptq", "awq_marlin", "gptq_marlin", "marlin"},
}
# llama.cpp's tools/server/README.md (llama-server --help): the flags Cardinal renders.
LLAMA_FLAGS = {
    "-m", "-hf", "--alias", "--host", "--port", "-ngl", "-c", "-np", "--n-cpu-moe", "-fa",
    "-ctk", "-ctv", "--metrics",
}  # fmt: skip
LLAMA_CHOICES = {"-fa": {"on", "off", "auto"}, "-ctk": {"f16", "bf16", "q8_0", "q4_0"}}


def plan_of(case: str) -> dict:
    return planfile.load((GOLDEN / case / "fleet.yaml").read_text(encoding="utf-8"))


def golden_files(case: str) -> dict[str, str]:
    files = render_all(plan_of(case))
    return {k: v for k, v in files.items() if not any(s in k for s in SHARED)}


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    out = GOLDEN / case / "out"
    files = golden_files(case)
    if UPDATE:
        for rel, text in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text, encoding="utf-8")
    expected = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert expected == set(files), "files added or gone: CARDINAL_GOLDEN=update to accept"
    for rel, text in files.items():
        assert (out / rel).read_text(encoding="utf-8") == text, (
            f"{case}/{rel} drifted: CARDINAL_GOLDEN=update pytest tests/test_render.py"
        )


@pytest.mark.parametrize("case", CASES)
def test_gateway_yaml_loads_with_the_gateways_loader(case: str) -> None:
    plan = plan_of(case)
    config = gwconfig.load(render_all(plan)["gateway.yaml"], env={})
    fleet = fleet_from_plan(plan)
    assert [b.url for b in config.backends] == [
        f"http://engine-{i}:8000" for i in range(fleet.replicas)
    ]
    assert {b.models for b in config.backends} == {(fleet.model,)}
    assert {b.max_inflight for b in config.backends} == {fleet.max_inflight}
    assert config.admission.queue_timeout_s == fleet.ttft_slo_s


def _flags(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, a in enumerate(args):
        if a.startswith("-"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            out[a] = None if nxt is None or nxt.startswith("-") else nxt
    return out


@pytest.mark.parametrize("case", ["vllm-awq", "vllm-tp8-fp8"])
def test_vllm_arguments_are_vllms_documented_flags(case: str) -> None:
    fleet = fleet_from_plan(plan_of(case))
    flags = _flags(vllm_args(fleet))
    assert set(flags) <= VLLM_FLAGS
    for flag, choices in VLLM_CHOICES.items():
        assert flags.get(flag, "auto") in choices | {"auto"}
    s = fleet.settings
    assert flags["--tensor-parallel-size"] == str(s["tensor_parallel_size"])
    assert flags["--max-num-seqs"] == str(s["max_num_seqs"])
    assert flags["--max-model-len"] == str(s["max_model_len"])
    assert flags["--served-model-name"] == fleet.model


def test_vllm_fp8_quantizes_online_and_awq_loads_a_checkpoint() -> None:
    tp = _flags(vllm_args(fleet_from_plan(plan_of("vllm-tp8-fp8"))))
    assert (tp["--quantization"], tp["--kv-cache-dtype"]) == ("fp8", "fp8")
    assert tp["--tensor-parallel-size"] == "8"
    awq = _flags(vllm_args(fleet_from_plan(plan_of("vllm-awq"))))
    # the checkpoint's config names AWQ, and vLLM then picks its Marlin kernels itself
    assert "--quantization" not in awq
    assert vllm_args(fleet_from_plan(plan_of("vllm-awq")))[0].endswith("-awq")


def test_llama_server_arguments() -> None:
    fleet = fleet_from_plan(plan_of("llamacpp-moe-offload"))
    args = llama_server_args(fleet)
    flags = _flags(args)
    assert set(flags) <= LLAMA_FLAGS
    s = fleet.settings
    assert flags["-ngl"] == str(s["gpu_layers"])
    assert flags["--n-cpu-moe"] == str(s["n_cpu_moe"])
    # 768 tokens a slot (512 + 256) and the chat template's 128, rounded up to 256: 1024 a slot
    assert (flags["-c"], flags["-np"]) == ("2048", str(s["parallel"]))
    assert flags["-hf"] == "unsloth/DeepSeek-V3.1-GGUF:Q8_0"
    assert "--metrics" in flags
    for flag, choices in LLAMA_CHOICES.items():
        assert flags.get(flag, "on") in choices | {"on"}
    # a local file replaces the download, for runs with no network
    assert llama_server_args(fleet, model_path="/models/x.gguf")[:2] == ["-m", "/models/x.gguf"]


def test_engine_script_is_one_shell_command() -> None:
    script = render_all(plan_of("vllm-awq"))["engine.sh"]
    command = shlex.split(script.split("exec ", 1)[1].replace("\\\n", " "))
    assert command[:2] == ["vllm", "serve"]
    assert command[command.index("--port") + 1] == "${PORT:-8000}"


def test_histogram_buckets_match_the_gateway() -> None:
    # the SLO rules count at bucket bounds: they must be the gateway's bounds
    assert rules.TTFT_BUCKETS == gwmetrics.TTFT_BUCKETS
    assert rules.ITL_BUCKETS == gwmetrics.ITL_BUCKETS


@pytest.mark.parametrize(
    ("slo", "buckets", "want"),
    [(2.0, rules.TTFT_BUCKETS, "2.0"), (120.0, rules.TTFT_BUCKETS, "60.0"),
     (0.05, rules.ITL_BUCKETS, "0.05"), (0.06, rules.ITL_BUCKETS, "0.05")],
)  # fmt: skip
def test_slo_counts_at_the_bucket_at_or_below(slo: float, buckets: tuple, want: str) -> None:
    assert rules.le(rules.bucket_at_or_below(slo, buckets)) == want


def test_plan_that_does_not_fit_names_the_field() -> None:
    plan = plan_of("vllm-awq")
    plan["engine_settings"] = None
    with pytest.raises(FieldError) as e:  # the plan file's own check, before render's
        render_all(plan)
    assert e.value.field == "engine_settings"


def test_scaled_plan_keeps_capacity_per_replica() -> None:
    plan = scaled(plan_of("vllm-awq"), 5)
    fleet = fleet_from_plan(plan)
    assert (fleet.replicas, plan["fleet"]["gpus"]) == (5, 5)
    assert fleet.capacity_total_qps == pytest.approx(5 * plan["replica"]["capacity_qps"])


def test_cli_writes_every_file_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = GOLDEN / "vllm-awq" / "fleet.yaml"
    assert main(["render", str(src), "-o", str(tmp_path / "deploy")]) == 0
    printed = capsys.readouterr().out.splitlines()
    written = sorted(str(p.relative_to(tmp_path / "deploy")) for p in tmp_path.rglob("*.*"))
    # every file, and one line for the gateway image's build context
    assert len(printed) == len(render_all(plan_of("vllm-awq"))) + 1 >= 15
    assert "docker-compose.yml" in written and "nginx.conf" in written
    assert os.access(tmp_path / "deploy" / "engine.sh", os.X_OK)
    compose = yaml.safe_load((tmp_path / "deploy" / "docker-compose.yml").read_text())
    assert (
        Path(tmp_path / "deploy", compose["services"]["gateway"]["build"]["context"])
        .joinpath("Dockerfile")
        .exists()
    ), "the build context is in the output: the repository's Dockerfile and source"


def test_cli_only_and_replicas(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = str(GOLDEN / "vllm-awq" / "fleet.yaml")
    args = ["render", src, "-o", str(tmp_path), "--sim", "--replicas", "3", "--only", "monitoring"]
    assert main(args) == 0
    assert not (tmp_path / "docker-compose.yml").exists()
    plan_rules = (tmp_path / "monitoring/prometheus/rules/plan.yml").read_text()
    assert "gateway:plan_replicas\n    expr: vector(3)" in plan_rules


def test_cli_error_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plan = plan_of("vllm-awq")
    plan["engine_settings"] = None
    (tmp_path / "fleet.yaml").write_text(planfile.dump(plan))
    assert main(["render", str(tmp_path / "fleet.yaml"), "-o", str(tmp_path / "d")]) == 2
    assert "engine_settings" in capsys.readouterr().err


def test_serve_data_makes_one_backend_per_url_with_the_engine_batch() -> None:
    plan = plan_of("vllm-awq")
    plan["inputs"]["model"] = "deepseek-r1-distill-qwen-7b"
    plan["replica"] |= {"max_batch": 128, "capacity_qps": 12.5}
    plan["engine_settings"]["max_num_seqs"] = 96
    plan["fleet"]["replicas"] = 2
    data = serve_data(plan, urls=["http://h:8001", "http://h:8002"], listen="0.0.0.0:8080")
    c = gwconfig.parse(data, env={})
    assert [(b.name, b.url, b.max_inflight) for b in c.backends] == [
        ("card-0", "http://h:8001", 96),
        ("card-1", "http://h:8002", 96),
    ]
    assert c.backends[0].models == ("deepseek-r1-distill-qwen-7b",) and c.port == 8080


def test_serve_plan_runs_the_gateway_config_render_writes() -> None:
    # one function turns a plan into a gateway config: `serve --plan` and `prove` run what
    # `render` deploys (engine-aware routing, admission sized from the plan), names aside
    plan = plan_of("vllm-awq")
    urls = ["http://h:8001", "http://h:8002"]
    served = serve_data(plan, urls=urls, listen="0.0.0.0:8080")
    rendered = yaml.safe_load(render_gateway_config(plan, urls=urls, listen="0.0.0.0:8080"))
    for b in served["backends"] + rendered["backends"]:
        del b["name"]
    assert served == rendered
    assert served["routing"] == {"policy": "engine_aware"}
