"""`cardinal` end to end: in-process through `main`, and once as the installed script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import planfile
from gateway.cli import main
from tests.hf_configs import QWEN2_7B_CONFIG

CARDINAL = Path(sys.executable).parent / "cardinal"
PLAN_32B = [
    "plan",
    "--model",
    "deepseek-r1-distill-qwen-32b",
    "--quant",
    "awq",
    "--gpu",
    "a100-80gb-sxm",
    "--engine",
    "vllm",
    "--target-qps",
    "75",
    "--prompt-tokens",
    "512",
    "--output-tokens",
    "256",
    "--ttft-slo",
    "2s",
    "--tpot-slo",
    "50ms",
]
WORKLOAD = ["--target-qps", "2", "--prompt-tokens", "512", "--output-tokens", "256"]


def cardinal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of one in-process run (argparse exits via SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_installed_script_prints_the_report(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(CARDINAL), *PLAN_32B], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for heading in ("Memory", "Fit", "Fleet", "Cost"):
        assert heading in done.stdout


def test_plan_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cardinal(PLAN_32B, capsys)
    assert (code, err) == (0, "")
    for heading in ("Memory", "Fit", "Fleet", "Cost"):
        assert f"\n{heading}" in out


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cardinal([*PLAN_32B, "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert isinstance(data["fleet"]["gpus"], int) and data["fleet"]["gpus"] >= 1
    assert data["inputs"]["workload"]["tpot_slo_s"] == pytest.approx(0.05)


def test_plan_file_written_and_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.yaml"
    code, out, _ = cardinal([*PLAN_32B, "-o", str(path)], capsys)
    assert code == 0 and str(path) in out
    data = planfile.load(path.read_text(encoding="utf-8"))
    assert data["inputs"]["model"] == "deepseek-r1-distill-qwen-32b"

    code, shown, err = cardinal(["show", str(path)], capsys)
    assert (code, err) == (0, "")
    assert "Fleet" in shown and "deepseek-r1-distill-qwen-32b" in shown
    assert shown in out  # the same report `plan` printed


def test_show_rejects_a_bad_plan_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("version: 2\n", encoding="utf-8")
    code, _, err = cardinal(["show", str(path)], capsys)
    assert code == 2
    assert "version" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("  max_num_seqs: 16\n", "  max_num_seqs: -28\n"), "engine_settings.max_num_seqs"),
        (("  gpu: a10\n", "  gpu: l44\n"), "inputs.gpu"),
    ],
)
@pytest.mark.parametrize("command", ["show", "render"])
def test_a_hand_edited_plan_is_refused_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, edit: tuple, field: str
) -> None:
    path = tmp_path / "fleet.yaml"
    argv = ["plan", "--model", "deepseek-r1-distill-qwen-7b", "--quant", "awq", "--gpu", "a10g"]
    argv += ["--prompt-tokens", "256", "--output-tokens", "32", "--target-qps", "2"]
    argv += ["--ttft-slo", "1s", "--tpot-slo", "40ms", "-o", str(path)]
    assert cardinal(argv, capsys)[0] == 0
    text = path.read_text(encoding="utf-8")
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1]), encoding="utf-8")
    extra = ["-o", str(tmp_path / "out")] if command == "render" else []
    code, out, err = cardinal([command, str(path), *extra], capsys)
    assert code == 2, out + err
    assert f"error: {field}: " in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "flag", "mention"),
    [
        ({"--model": "deepseek-r1-distil-qwen-32b"}, "--model", "deepseek-r1-distill-qwen-32b"),
        ({"--target-qps": "-1"}, "--target-qps", "-1"),
        ({"--prompt-tokens": "0"}, "--prompt-tokens", "0"),
        ({"--ttft-slo": "banana"}, "--ttft-slo", "banana"),
        ({"--tpot-slo": "50"}, "--tpot-slo", "has no unit; give one: 50ms or 50s"),
        ({"--quant": "q4_k_m"}, "--quant", "q4_k_m"),
        ({"--gpu": "a100-90g"}, "--gpu", "a100-80gb-sxm"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(
    change: dict[str, str], flag: str, mention: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = list(PLAN_32B)
    for key, value in change.items():
        argv[argv.index(key) + 1] = value
    code, out, err = cardinal(argv, capsys)
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and mention in lines[0]


def test_catalog_lists_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cardinal(["catalog"], capsys)
    assert code == 0
    for entry in ("deepseek-v3", "q4_k_m", "h100-sxm", "llama.cpp"):
        assert f"  {entry} " in out


def test_check_accuracy_targets_met(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cardinal(["check-accuracy"], capsys)
    assert code == 0
    assert out.rstrip().splitlines()[-1].endswith(": met")


def plan_from_config(
    cfg: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    """`cardinal plan --model-config` on `cfg` written to a config.json, fp16 on an A100."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg), encoding="utf-8")
    argv = ["plan", "--model-config", str(config), "--quant", "fp16", "--gpu", "a100-80gb-sxm"]
    return cardinal([*argv, *WORKLOAD, *extra], capsys)


def test_model_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = plan_from_config(QWEN2_7B_CONFIG, tmp_path, capsys, "--json")
    data = json.loads(out)
    assert (code, err) == (0, "")
    # same 7,615,616,512 parameters as the catalog's Qwen2.5-7B, at 2 bytes each
    assert data["memory"]["weights_gib"] == pytest.approx(7_615_616_512 * 2 / 2**30, abs=1e-3)
    assert data["memory"]["kv_bytes_per_token"] == 56 * 1024


def test_model_config_missing_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {k: v for k, v in QWEN2_7B_CONFIG.items() if k != "num_hidden_layers"}
    code, _, err = plan_from_config(cfg, tmp_path, capsys)
    assert code == 2
    assert "--model-config" in err and "num_hidden_layers" in err
    assert "Traceback" not in err


def test_an_output_that_cannot_be_written_names_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = cardinal([*PLAN_32B, "-o", str(tmp_path / "missing" / "fleet.yaml")], capsys)
    assert code == 2
    assert "error: -o: cannot write" in err and "Traceback" not in err
