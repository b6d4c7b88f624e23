"""`cardinal whatif`: the plan's fleet in virtual time, under traffic, faults and autoscaling."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from gateway.cli.args import positive, read_text, write_text
from gateway.planner.catalog import Catalog

POLICIES = ("round_robin", "least_outstanding", "engine_aware", "affinity")
DEFAULT_COLD_START = "5m"


def _time(text: str) -> float:
    from gateway.whatif.events import EventError, seconds

    try:
        value = seconds(text, field="time")
    except EventError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def add_whatif_parser(sub: Any) -> None:
    p = sub.add_parser(
        "whatif",
        help="run the plan's fleet in virtual time: traffic, routing, lost cards, autoscaling",
        description="The plan's cards as simulated engines on a virtual clock behind the "
        "gateway's own admission and routing: an hour of traffic on 1,000 cards in minutes. "
        "Prints a line per minute (SLO attainment, TTFT/TPOT percentiles, queue, cards) and the "
        "totals (GPU-hours, cost). docs/whatif.md has examples.",
    )
    p.add_argument("plan", type=Path, help="fleet.yaml")
    p.add_argument("--cards", type=positive(int), help="at the start (default: the plan's)")
    p.add_argument("--duration", type=_time, default=600.0, help="virtual time (default 10m)")
    p.add_argument(
        "--target-qps", type=positive(float), help="mean rate (default: the plan's; a trace is "
        "scaled to it unless --trace-speed is given)",
    )  # fmt: skip
    p.add_argument(
        "--arrival", default=None, help="poisson, gamma:cv=N, constant, or trace "
        "(default: trace with --trace, else poisson)",
    )  # fmt: skip
    p.add_argument("--trace", type=Path, help="Azure LLM inference trace CSV, or JSONL")
    p.add_argument("--trace-speed", type=positive(float), help="replay the trace this much faster")
    p.add_argument(
        "--prompt-tokens", help="a count, percentiles like p50=512,p90=2048, or `trace` "
        "(default: the trace's with --trace, else the plan's)",
    )  # fmt: skip
    p.add_argument("--output-tokens", help="as --prompt-tokens")
    p.add_argument("--policy", choices=POLICIES, help="routing (default: the rendered gateway's)")
    p.add_argument(
        "--event", action="append", default=[], metavar="AT:ACTION",
        help="30m:lose=8, 10m:add=8 or 5m:slow=2,cards=4 (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--cold-start",
        type=_time,
        default=_time(DEFAULT_COLD_START),
        help=f"an added card's time to serve (default {DEFAULT_COLD_START})",
    )
    p.add_argument(
        "--autoscale", metavar="RULE", help="on, or target=QPS,cold_start=5m,min=N,max=N,"
        "interval=15s,window=60s,scale_in_delay=5m (target default: the plan's per-card rate)",
    )  # fmt: skip
    p.add_argument(
        "--shards", type=positive(int), default=1, help="processes (cells) to split into"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--report", type=Path, help="write index.html with plots here")
    p.add_argument("--records-csv", type=Path, help="every request's record (small runs)")
    p.add_argument("--every", type=positive(int), default=1, help="print every Nth minute")


def options_from_args(args: argparse.Namespace) -> Any:
    from gateway import planfile
    from gateway.planner.errors import PlanError
    from gateway.whatif.events import parse_autoscale, parse_event
    from gateway.whatif.run import WhatifOptions
    from gateway.whatif.workload import Workload, WorkloadError, parse_lengths
    from loadtest import tracefile

    plan = planfile.read(read_text(args.plan))
    if not plan.fits:
        raise planfile.PlanFileError("the plan does not fit; nothing to run", field="fit.kind")
    w = plan.workload
    trace = None
    if args.trace:
        try:
            trace = tracefile.read(str(args.trace))
        except tracefile.TraceError as e:
            raise WorkloadError(str(e), field="trace") from None
    arrival, cv = args.arrival or ("trace" if trace else "poisson"), 1.0
    if arrival.startswith("gamma"):
        name, _, cv_text = arrival.partition(":cv=")
        try:
            cv = float(cv_text)
        except ValueError:
            raise WorkloadError(f"{arrival!r} must be gamma:cv=N", field="arrival") from None
        if name != "gamma" or not cv > 0 or not math.isfinite(cv):
            raise WorkloadError(f"{arrival!r} must be gamma:cv=N with N > 0", field="arrival")
        arrival = "gamma"
    if args.trace_speed and arrival != "trace":
        raise WorkloadError(
            "--trace-speed scales a replayed trace (--arrival trace)", field="trace_speed"
        )
    if args.trace_speed and args.target_qps:
        raise WorkloadError("give --trace-speed or --target-qps, not both", field="trace_speed")
    default_len = "trace" if trace else None
    prompt = parse_lengths(
        args.prompt_tokens or default_len or str(w.prompt_tokens),
        field="prompt_tokens",
        trace=trace,
    )
    output = parse_lengths(
        args.output_tokens or default_len or str(w.output_tokens),
        field="output_tokens",
        trace=trace,
    )
    rate = args.target_qps or w.target_qps
    speed = 1.0
    if arrival == "trace" and trace:  # without one, Workload refuses `--arrival trace`
        speed = args.trace_speed or rate / tracefile.mean_rate(trace)
    workload = Workload(
        arrival=arrival, rate=rate, cv=cv, seed=args.seed, prompt=prompt, output=output,
        trace=tuple(trace or ()), speed=speed,
    )  # fmt: skip
    events = tuple(parse_event(e, cold_start_s=args.cold_start) for e in args.event)
    autoscale = None
    if args.autoscale:
        per_card = plan.replica.capacity_qps
        target = per_card / (1 + w.headroom) if per_card else None
        autoscale = parse_autoscale(args.autoscale, target=target, cold_start_s=args.cold_start)
    cards = args.cards or plan.replicas
    if args.shards > cards:
        raise PlanError(f"{args.shards} shards for {cards} cards", field="shards")
    return WhatifOptions(
        plan=plan.data,
        cards=cards,
        duration_s=args.duration,
        workload=workload,
        policy=args.policy,
        events=events,
        autoscale=autoscale,
        shards=args.shards,
        seed=args.seed,
        records=bool(args.records_csv),
    )


def cmd_whatif(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.whatif import report
    from gateway.whatif.run import run

    options = options_from_args(args)
    result = run(options)
    if args.json:
        sys.stdout.write(report.dumps(result) + "\n")
    else:
        print(report.render(result, every=args.every))
    if args.report:
        page = report.write_report(result, args.report)
        print(f"report: {page}", file=sys.stderr if args.json else sys.stdout)
    if args.records_csv:
        write_records(args.records_csv, result.records or [])
    return 0


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    keys = ["id", "t", "ttft_s", "tpot_s", "e2e_s", "tokens", "error"]
    lines = [",".join(keys)]
    for r in records:
        lines.append(",".join(_cell(r[k]) for k in keys))
    write_text(path, "\n".join(lines) + "\n", flag="--records-csv")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6f}"
    return str(v)
