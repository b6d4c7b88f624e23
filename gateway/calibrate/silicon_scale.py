"""Measured DeepSeek runs with DP attention and expert parallelism from aiconfigurator-core's
`systems/silicon_sample.csv` (Apache-2.0), written as scale_silicon.csv in the shape of
scale_reference.csv, to check the scale model (planner/scale.py) on runs it was never fitted to.

Two kinds of run are kept, FP8 on one node of 8 H200s or B200s (EP8, eight DP attention ranks):
- the decode worker of a disaggregated run: its TPOT at `decode_batch_size` sequences per rank
  is one decode step at that batch, with contexts from `isl` to `isl + osl`;
- an aggregated run at a fixed concurrency, whose TPOT includes the new prompts prefilled inside
  the decode steps (the scale model's mixed step).
Either way the row's figure is the node's output rate while decoding: batch x 8 / TPOT.

`python -m gateway.calibrate.silicon_scale [SILICON_CSV] -o gateway/planner/data/scale_silicon.csv`
(`make serving-data`).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from gateway.calibrate import silicon
from gateway.calibrate.silicon import GPUS, default_input, render

MODELS = {k: v for k, v in silicon.MODELS.items() if v.startswith("deepseek-")}
ENGINES = {"sglang": "SGLang", "trtllm": "TensorRT-LLM"}
RANKS = 8  # one node: DP attention over 8 ranks, EP8
# the scale model's step cost beyond its kernels is fitted on one GPU's decode workers (the
# published rows, at 256 sequences per GPU, leave it free); B200 and the aggregated runs, whose
# steps also prefill, are held out
FIT = ("h200", "decode")
FIELDS = ("id", "role", "model", "gpu", "quant", "ep", "isl", "osl", "batch", "ctx", "accept",
          "balanced", "measured_per_node", "split", "setting", "source")  # fmt: skip


def _concurrency(r: dict[str, str]) -> int | None:
    m = re.search(r"silicon_concurrency=(\d+)", r["silicon_data_source"])
    return int(m.group(1)) if m else None


def _layout(r: dict[str, str]) -> tuple[str, int] | None:
    """(role, sequences per rank) of a run on one node with DP8 attention and EP8, else None."""
    if r["mode"] == "disagg":
        shape = (r["decode_tp_size"], r["decode_attention_dp_size"], r["decode_moe_ep_size"])
        if shape == ("1", str(RANKS), str(RANKS)) and r["decode_batch_size"]:
            return "decode", int(r["decode_batch_size"])
        return None
    shape = (r["tp_size"], r["attention_dp_size"], r["moe_ep_size"])
    conc = _concurrency(r)
    # the sample labels some aggregated runs twice (also as DP 64 x 4 sequences); the DP8 form,
    # whose batch times 8 is the run's concurrency, is the one kept
    if shape == ("1", str(RANKS), str(RANKS)) and conc == int(r["batch_size"]) * RANKS:
        return "aggregated", int(r["batch_size"])
    return None


def _unique(base: str, ids: set[str]) -> str:
    """`base`, or base-2, base-3 ... for runs of the same shape measured apart."""
    name, n = base, 1
    while name in ids:
        n += 1
        name = f"{base}-{n}"
    ids.add(name)
    return name


def convert(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    out, seen, ids = [], set(), set()
    for r in rows:
        if (
            r["model_path"] not in MODELS
            or r["backend"] not in ENGINES
            or r["system"] not in ("h200_sxm", "b200_sxm")
            or r["precision"] != "fp8"
            or not r["silicon_tpot_ms"]
        ):
            continue
        layout = _layout(r)
        if layout is None:
            continue
        role, batch = layout
        tpot_ms = float(r["silicon_tpot_ms"])
        key = (r["backend"], r["backend_version"], r["system"], role, r["isl"], r["osl"], batch,
               round(tpot_ms, 1))  # fmt: skip
        if key in seen:  # the same measurement under two config ids
            continue
        seen.add(key)
        isl, osl = int(r["isl"]), int(r["osl"])
        gpu = GPUS[r["system"]]
        kind = "disaggregated decode worker" if role == "decode" else "aggregated"
        out.append(
            {
                "id": _unique(f"aic-{r['backend']}-{gpu}-{role}-{isl}x{osl}-b{batch}", ids),
                "role": role,
                "model": MODELS[r["model_path"]],
                "gpu": gpu,
                "quant": "fp8",
                "ep": str(RANKS),
                "isl": str(isl),
                "osl": str(osl),
                "batch": str(batch),
                "ctx": str(isl + osl // 2) if role == "decode" else "",
                "accept": "0",
                "balanced": "false",
                "measured_per_node": f"{batch * RANKS * 1000 / tpot_ms:.0f}",
                "split": "fit" if (gpu, role) == FIT else "held_out",
                "setting": f"{ENGINES[r['backend']]} {r['backend_version']}, 8 x {gpu}, DP8 "
                f"attention + EP8, {kind}, {batch} sequences per rank, ISL/OSL {isl}/{osl}, "
                f"TPOT {tpot_ms:.1f} ms",
                "source": "aiconfigurator-core 0.12.0 systems/silicon_sample.csv; "
                + r["silicon_data_source"].split(";")[0],
            }
        )
    out.sort(key=lambda r: (r["gpu"], r["role"], r["id"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.calibrate.silicon_scale")
    p.add_argument("input", nargs="?", type=Path, help="silicon_sample.csv")
    p.add_argument("-o", "--output", type=Path, required=True)
    a = p.parse_args(argv)
    with (a.input or default_input()).open(encoding="utf-8") as f:
        rows = convert(csv.DictReader(f))
    a.output.write_text(render(rows, FIELDS), encoding="utf-8")
    n_fit = sum(r["split"] == "fit" for r in rows)
    held = len(rows) - n_fit
    print(f"{len(rows)} DP-attention + EP rows ({n_fit} fit, {held} held out) -> {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
