"""Docs are tested: generated docs match the planner, README commands run as written."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gateway.planner.accuracy import check_all
from gateway.planner.catalog import load_catalog
from gateway.prove.fleet import free_ports
from gateway.reports.accuracy import ACCURACY_HEADER, render_document
from gateway.reports.seeds import render_seeds

ROOT = Path(__file__).resolve().parents[1]
CARDINAL = Path(sys.executable).with_name("cardinal")


def test_seeds_doc_is_current() -> None:
    assert (ROOT / "docs/seeds.md").read_text(encoding="utf-8") == render_seeds(load_catalog()), (
        "docs/seeds.md drifted: run `make seeds`"
    )


def test_accuracy_doc_is_current() -> None:
    catalog = load_catalog()
    table = render_document(catalog, check_all(catalog))
    assert (ROOT / "docs/accuracy.md").read_text(encoding="utf-8") == ACCURACY_HEADER + table, (
        "docs/accuracy.md drifted: run `make accuracy`"
    )


def test_seed_docs_show_both_card_arithmetics() -> None:
    text = (ROOT / "docs/seeds.md").read_text(encoding="utf-8")
    assert re.search(
        r"\| cards = ceil\(75 / 10\) = 8 \| 8 with --per-card-qps 10 --headroom 0 .*\| agrees \|",
        text,
    )
    assert re.search(r"\| with 20 % spare capacity \| 9 cards", text)
    assert re.search(r"R1-Distill-Qwen-32B AWQ: [0-9.]+ QPS per A100-80GB", text)
    assert re.search(r"V3 INT8 on A100-80GB: \d+ replicas x 16 = \d+ GPUs", text)


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    joined = "\n".join(b.replace("\\\n", " ") for b in blocks)
    return [
        line.split("#")[0].strip()
        for line in joined.splitlines()
        if line.strip().startswith(".venv/bin/cardinal")
    ]


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```sh\n(.*?)```", text, flags=re.S)
    assert first_block is not None
    assert [ln.split()[:2] for ln in first_block.group(1).splitlines()] == [
        ["make", "demo"],
        ["make", "test"],
    ]


LONG_RUNNING = ("sim", "serve")  # started, checked to come up, then stopped


def test_readme_commands_run_in_order(tmp_path: Path) -> None:
    """Each README command as written, in one directory (a later one may read an earlier one's
    file); servers are started on free ports, checked, and stopped with SIGTERM."""
    for command in _readme_commands():
        argv = [str(CARDINAL), *shlex.split(command)[1:]]
        if argv[1] in LONG_RUNNING:
            _run_server(argv, tmp_path)
            continue
        result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        if argv[1] == "plan" and "-o" not in argv and "--json" not in argv:
            assert "Fleet" in result.stdout


def _run_server(argv: list[str], cwd: Path) -> None:
    port = free_ports(8)
    argv = [*argv, "--port", str(port)]  # argparse: the last --port wins
    proc = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not _answers(f"http://127.0.0.1:{port}/health"):
            assert proc.poll() is None, f"{argv}: {proc.stderr.read() if proc.stderr else ''}"
            assert time.monotonic() < deadline, f"{argv} did not come up"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def test_readme_has_commands() -> None:
    assert len(_readme_commands()) >= 2


def test_makefile_demo_plan_is_the_readme_example() -> None:
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    demo = re.search(r"DEMO_PLAN := (.*?)\n\n", make, flags=re.S)
    assert demo is not None
    flags = shlex.split(demo.group(1).replace("\\\n", " "))
    assert flags[:2] == ["--model", "deepseek-r1-distill-qwen-7b"]  # a DeepSeek scenario
    assert "$(BIN)/cardinal plan $(DEMO_PLAN) -o fleet.yaml" in make
    assert any(shlex.split(c)[2:] == [*flags, "-o", "fleet.yaml"] for c in _readme_commands())
