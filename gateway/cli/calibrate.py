"""`cardinal calibrate` and `cardinal plan --calibration`: the command-line side of calibration."""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway import planfile
from gateway.calibrate import calibration
from gateway.calibrate.comparison import compare, render_comparison, workload_mismatch
from gateway.cli.args import duration, positive, write_text
from gateway.errors import UsageError
from gateway.planner.catalog import Catalog
from gateway.planner.errors import PlanError
from gateway.planner.plan import Plan, PlanRequest, make_plan
from gateway.planner.report import plan_dict


def add_calibrate_parser(sub: Any) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="measure one real card: decode and prefill speed, highest QPS within the SLOs",
        description="Measure one running engine (llama.cpp's llama-server, vLLM, any OpenAI-"
        "compatible server): decode tokens/s at several batch sizes, prefill tokens/s, and by an "
        "open-loop rate search with the Locust scenario the highest QPS meeting the SLOs for the "
        "workload. Writes a calibration file for `cardinal plan --calibration`. Exit 0: written; "
        "1: no rate met the SLOs; 2: the engine could not be measured.",
    )
    cal.add_argument("--backend", required=True, metavar="URL", help="the engine, e.g. :8000")
    cal.add_argument("--model", help="the model name to send (default: the engine's first)")
    cal.add_argument("--plan", type=Path, help="fleet.yaml: workload, SLOs and GPUs per replica")
    cal.add_argument("--prompt-tokens", type=positive(int))
    cal.add_argument("--output-tokens", type=positive(int))
    cal.add_argument("--ttft-slo", type=duration, help="e.g. 2s")
    cal.add_argument("--tpot-slo", type=duration, help="e.g. 50ms")
    cal.add_argument(
        "--gpus", type=positive(int), help="cards behind the URL (default: the plan's, or 1)"
    )
    cal.add_argument(
        "--batches",
        type=_batches,
        default=(1, 2, 4, 8),
        help="concurrent streams to measure decode at (default 1,2,4,8)",
    )
    cal.add_argument("--duration", type=duration, default=30.0, help="of each rate trial")
    cal.add_argument("--trials", type=positive(int), default=8, help="rate trials at most")
    cal.add_argument("--start-qps", type=positive(float), help="first rate to try")
    cal.add_argument("--records", type=Path, help="keep the Locust logs and records here")
    cal.add_argument("-o", "--output", type=Path, default=Path("cal.yaml"), help="(cal.yaml)")


def add_calibration_argument(plan: argparse.ArgumentParser) -> None:
    plan.add_argument(
        "--calibration",
        type=Path,
        help="size from the per-card capacity measured by `cardinal calibrate` (cal.yaml)",
    )


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,2,4,8") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every batch size must be >= 1")
    return values


def cmd_calibrate(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.calibrate.measurement import CalibrateOptions, calibrate
    from gateway.calibrate.probe import ProbeError

    workload, gpus = _workload(args)
    with tempfile.TemporaryDirectory(prefix="cardinal-calibrate-") as tmp:
        work = args.records or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        options = CalibrateOptions(
            backend=args.backend.rstrip("/"),
            model=args.model,
            gpus=args.gpus or gpus,
            batches=args.batches,
            duration_s=args.duration,
            max_trials=args.trials,
            start_qps=args.start_qps,
            plan=str(args.plan) if args.plan else None,
            work_dir=work,
            **workload,
        )
        try:
            data = calibrate(options, say=lambda line: print(line, flush=True))
        except ProbeError as e:
            raise UsageError(str(e), field="--backend") from None
    cap = data["capacity"]
    if not cap["per_card_qps"] > 0:
        print(
            f"cardinal calibrate: no rate met the SLOs (lowest tried "
            f"{min(t['target_qps'] for t in cap['trials']):g} QPS); nothing written",
            file=sys.stderr,
        )
        return 1
    write_text(args.output, calibration.dump(data))
    print(
        f"capacity: {cap['replica_qps']:g} QPS per replica = {cap['per_card_qps']:g} QPS per card"
        f"\ncalibration written to {args.output}"
    )
    return 0


def _workload(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """(prompt/output tokens and SLOs, GPUs per replica) from --plan or from the flags."""
    flags = ("prompt_tokens", "output_tokens", "ttft_slo", "tpot_slo")
    given = [f for f in flags if getattr(args, f) is not None]
    if args.plan:
        if given:
            raise PlanError(f"--{given[0].replace('_', '-')} goes without --plan", field=given[0])
        plan = planfile.read(_read(args.plan, field="plan"))
        keys = ("prompt_tokens", "output_tokens", "ttft_slo_s", "tpot_slo_s")
        return {k: getattr(plan.workload, k) for k in keys}, plan.replica.gpus or 1
    for f in flags:
        if getattr(args, f) is None:
            raise PlanError(f"--{f.replace('_', '-')} is required without --plan", field=f)
    return {
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "ttft_slo_s": args.ttft_slo,
        "tpot_slo_s": args.tpot_slo,
    }, 1


def calibrated_plan(
    args: argparse.Namespace, req: PlanRequest, catalog: Catalog
) -> tuple[Plan, dict[str, Any]]:
    """The plan sized from the measured per-card capacity, with measured vs modelled figures."""
    if args.per_card_qps:
        raise PlanError("give --calibration or --per-card-qps, not both", field="per_card_qps")
    try:
        cal = calibration.load(_read(args.calibration, field="calibration"))
    except calibration.CalibrationError as e:
        raise PlanError(f"{args.calibration}: `{e.field}`: {e}", field="calibration") from None
    measured_qps = cal["capacity"]["per_card_qps"]
    plan = make_plan(replace(req, per_card_qps=measured_qps), catalog)
    data = plan_dict(plan)
    modelled = plan_dict(make_plan(req, catalog))
    data["calibration"] = compare(
        cal, measured=data, modelled=modelled, source=str(args.calibration)
    )
    mismatch = workload_mismatch(cal, planfile.of(data))
    if mismatch:
        data["warnings"].append(mismatch)
    return plan, data


def calibration_text(data: dict[str, Any]) -> str:
    """The measured-vs-modelled block of a plan that has one (else nothing)."""
    return render_comparison(data["calibration"]) if data.get("calibration") else ""


def _read(path: Path, *, field: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise PlanError(f"cannot read {path}: {e.strerror}", field=field) from None
