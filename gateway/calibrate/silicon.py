"""Measured serving points from aiconfigurator-core's `systems/silicon_sample.csv` (Apache-2.0),
reduced to the configurations Cardinal's step model covers, written as the planner's serving.csv.

Each kept row is one benchmark run at a fixed concurrency: `concurrency` clients, each sending
its next request when the previous answer ends, `isl` prompt tokens and `osl` output tokens, and
the mean TTFT and TPOT it measured. Rows are split into the part the speed constants are fitted on
and the part held out, by (model, GPU) and never at random, so the held-out error is the error on
a model or GPU the fit has not seen.

`python -m gateway.calibrate.silicon [SILICON_CSV] -o gateway/planner/data/serving.csv` (the
default input is the installed aiconfigurator-core's copy: `make serving-data`).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

# HF repo -> catalog model id; other models are not in Cardinal's catalog yet
MODELS = {
    "deepseek-ai/DeepSeek-R1": "deepseek-r1",
    "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "llama-3.1-8b",
    "Qwen/Qwen3-32B": "qwen3-32b",
}
GPUS = {"h100_sxm": "h100-sxm", "h200_sxm": "h200", "b200_sxm": "b200"}
ENGINES = ("vllm", "sglang")  # TensorRT-LLM is not one of Cardinal's engines
QUANTS = {"fp8": "fp8", "fp8_block": "fp8", "": "fp16"}  # gemm_quant_mode; "" is bf16

# (model, gpu) groups kept out of the fit: a GPU generation (B200) and models (Llama-3.1-8B,
# Qwen3-32B) and a GPU (H100 for the 70B) that the fitted groups do not contain.
HELD_OUT = {
    ("llama-3.1-70b", "h100-sxm"),
    ("llama-3.1-8b", "h200"),
    ("qwen3-32b", "h100-sxm"),
    ("deepseek-r1", "b200"),
    ("deepseek-v3", "b200"),
}

FIELDS = (
    "id",
    "engine",
    "engine_version",
    "model",
    "quant",
    "gpu",
    "tp",
    "isl",
    "osl",
    "concurrency",
    "ttft_ms",
    "tpot_ms",
    "split",
    "source",
)


def keep(r: dict[str, str]) -> bool:
    """Aggregated serving (no disaggregation), one pipeline stage, no DP attention or expert
    parallelism (the step model plans those later), an engine and a configuration it covers."""
    return (
        r["mode"] == "agg"
        and r["backend"] in ENGINES
        and r["model_path"] in MODELS
        and r["system"] in GPUS
        and r["gemm_quant_mode"] in QUANTS
        and r["pp_size"] == "1"
        and r["attention_dp_size"] in ("", "1")
        and r["moe_ep_size"] in ("", "1")
        and bool(r["silicon_tpot_ms"])
        and bool(r["silicon_ttft_ms"])
    )


def convert(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """The kept rows in serving.csv's shape; a measurement listed twice (the sample repeats
    some runs under two config ids) is kept once."""
    out, seen = [], set()
    for r in rows:
        if not keep(r):
            continue
        key = tuple(r[k] for k in ("backend", "backend_version", "model_path", "system",
                                    "tp_size", "isl", "osl", "batch_size",
                                    "silicon_ttft_ms", "silicon_tpot_ms"))  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        model, gpu = MODELS[r["model_path"]], GPUS[r["system"]]
        out.append(
            {
                "id": r["id"],
                "engine": r["backend"],
                "engine_version": r["backend_version"],
                "model": model,
                "quant": QUANTS[r["gemm_quant_mode"]],
                "gpu": gpu,
                "tp": r["tp_size"],
                "isl": r["isl"],
                "osl": r["osl"],
                "concurrency": r["batch_size"],
                "ttft_ms": f"{float(r['silicon_ttft_ms']):.3f}",
                "tpot_ms": f"{float(r['silicon_tpot_ms']):.4f}",
                "split": "held_out" if (model, gpu) in HELD_OUT else "fit",
                "source": "aiconfigurator-core 0.12.0 systems/silicon_sample.csv; "
                + r["silicon_data_source"].split(";")[0],
            }
        )
    out.sort(key=lambda r: (r["split"], r["model"], r["gpu"], r["engine"], r["id"]))
    return out


def render(rows: list[dict[str, str]], fields: Sequence[str] = FIELDS) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def default_input() -> Path:
    try:
        from importlib import resources

        return Path(str(resources.files("aiconfigurator_core") / "systems" / "silicon_sample.csv"))
    except ModuleNotFoundError:
        raise SystemExit(
            "aiconfigurator-core is not installed: `make serving-data` installs it, or pass the "
            "path of a silicon_sample.csv"
        ) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.calibrate.silicon")
    p.add_argument("input", nargs="?", type=Path, help="silicon_sample.csv")
    p.add_argument("-o", "--output", type=Path, required=True)
    a = p.parse_args(argv)
    src = a.input or default_input()
    with src.open(encoding="utf-8") as f:
        rows = convert(csv.DictReader(f))
    a.output.write_text(render(rows), encoding="utf-8")
    n_fit = sum(r["split"] == "fit" for r in rows)
    print(f"{len(rows)} rows ({n_fit} fit, {len(rows) - n_fit} held out) -> {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
