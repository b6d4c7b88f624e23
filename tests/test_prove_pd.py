"""`cardinal prove --at-scale` on a prefill/decode-disaggregated DeepSeek plan: its simulated
prefill and decode workers (SGLang's protocol) behind the gateway pass at the planned target, and
one decode worker fewer fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.process_harness import judged

CARDINAL = Path(sys.executable).with_name("cardinal")
# 2 x EP16 decode groups and one EP16 prefill group: 70 QPS needs both decode groups; one
# completes about 47 QPS (a third short)
PLAN = [
    "plan", "--model", "deepseek-v3", "--quant", "fp8", "--gpu", "h100-sxm",
    "--target-qps", "70", "--prompt-tokens", "256", "--output-tokens", "32",
    "--tpot-slo", "30ms", "--ttft-slo", "1s", "--layout", "pd", "--mtp", "off",
]  # fmt: skip


def test_pd_fleet_passes_at_its_target_and_fails_with_one_decode_worker_fewer(
    tmp_path: Path,
) -> None:
    plan = tmp_path / "fleet.yaml"
    subprocess.run([str(CARDINAL), *PLAN, "-o", str(plan)], check=True, capture_output=True)
    run = judged(plan, "--at-scale", "--check-minimal", "--duration", "12s", timeout=300)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PD: 1 x EP16 prefill + 2 x EP16 decode" in run.stdout
    assert "proof at 70.00 QPS on 2 decode worker(s): PASS" in run.stdout
    assert "minus-one at 70.00 QPS on 1 decode worker(s): FAIL" in run.stdout
    assert (tmp_path / "report" / "gateway.yaml").read_text().count("role: prefill") == 1
