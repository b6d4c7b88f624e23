"""`cardinal calibrate` against a real llama-server, and `cardinal plan --calibration`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.calibrate import calibration
from gateway.cli import main
from tests.llamacpp_harness import llama_servers, start_args
from tests.process_harness import SHORT_RUN

CARDINAL = str(Path(sys.executable).with_name("cardinal"))
PLAN = [
    "plan", "--model", "deepseek-r1-distill-qwen-1.5b", "--quant", "q4_k_m", "--gpu", "l4",
    "--engine", "llama.cpp", "--prompt-tokens", "64", "--output-tokens", "64",
    "--ttft-slo", "300ms", "--tpot-slo", "10ms",
]  # fmt: skip


@pytest.fixture(scope="module")
def measured(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibration of one tiny llama-server (4 slots, 1 thread: Locust needs the other core)."""
    out = tmp_path_factory.mktemp("calibrate")
    with llama_servers(start_args(tiny_model, 1), logs=out) as (server,):
        run = subprocess.run(
            [CARDINAL, "calibrate", "--backend", server.url, *PLAN[-8:], "--batches", "1,4"]
            # from 20 QPS, half of what this card holds on a quiet machine, so a passing rate
            # is found even on a busy one (Locust shares the 2 cores with the server)
            + ["--duration", "8s", "--trials", "2", "--start-qps", "20"]
            + ["--records", str(out), "-o", str(out / "cal.yaml")],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **SHORT_RUN},
        )
    print(run.stdout + run.stderr)
    assert run.returncode == 0, run.stderr
    return out / "cal.yaml"


def test_calibrate_measures_a_real_server(measured: Path) -> None:
    cal = calibration.load(measured.read_text(encoding="utf-8"))
    assert cal["backend"]["engine"] == "llama.cpp"
    assert [p["batch"] for p in cal["decode"]["points"]] == [1, 4]
    assert all(p["tokens_per_s"] > 0 and p["engine_tokens_per_s"] for p in cal["decode"]["points"])
    assert cal["prefill"]["tokens_per_s"] > 0 and cal["prefill"]["engine_tokens_per_s"]
    trials = cal["capacity"]["trials"]
    assert len(trials) == 2 and trials[0]["target_qps"] == 20
    passed = [t["target_qps"] for t in trials if t["verdict"] == "PASS"]
    assert cal["capacity"]["per_card_qps"] == max(passed)


def test_plan_with_the_calibration_sizes_from_the_measured_capacity(
    measured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qps = calibration.load(measured.read_text(encoding="utf-8"))["capacity"]["per_card_qps"]
    for target in (10 * qps, 3.5 * qps):
        args = [*PLAN, "--target-qps", f"{target:g}", "--headroom", "20%"]
        assert main([*args, "--calibration", str(measured), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        # the seeds' formula, fed with the measurement: cards = ceil(target x 1.2 / measured)
        assert data["fleet"]["replicas"] == math.ceil(target * 1.2 / qps - 1e-9)
        figures = data["calibration"]["figures"]
        assert figures["per_card_qps"]["measured"] == qps
        assert figures["per_card_qps"]["modelled"] > 0 and figures["replicas"]["modelled"] >= 1
    assert main([*args, "--calibration", str(measured)]) == 0
    text = capsys.readouterr().out
    assert "Measured vs modelled" in text and f"{qps:.3f} QPS" in text


def test_a_calibration_file_is_validated_and_errors_name_the_field(
    measured: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = yaml.safe_load(measured.read_text(encoding="utf-8"))
    for key, value, field in (
        ("version", 2, "version"),
        ("capacity", {**good["capacity"], "per_card_qps": 0}, "capacity.per_card_qps"),
        ("decode", {**good["decode"], "points": [{"batch": 1}]}, "decode.points[0].tokens_per_s"),
        ("workload", {**good["workload"], "output_tokens": "many"}, "workload.output_tokens"),
    ):
        with pytest.raises(calibration.CalibrationError) as e:
            calibration.load(yaml.safe_dump({**good, key: value}))
        assert e.value.field == field
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**good, "version": 2}), encoding="utf-8")
    assert main([*PLAN, "--target-qps", "5", "--calibration", str(bad)]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert (
        main([*PLAN, "--target-qps", "5", "--calibration", str(measured), "--per-card-qps", "3"])
        == 2
    )


def test_calibrate_needs_a_workload(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--backend", "http://127.0.0.1:9", "--prompt-tokens", "8"]) == 2
    assert "--output-tokens" in capsys.readouterr().err
