"""`cardinal prove`: a plan's cards and gateway under the Locust scenario, with a verdict."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.planner.catalog import Catalog
from gateway.planner.errors import PlanError

if TYPE_CHECKING:
    pass
from gateway.cli.args import (
    duration,
    positive,
    read_text,
)


def add_prove_parser(sub: Any) -> None:
    prove = sub.add_parser(
        "prove",
        help="prove a plan: its cards and gateway under the Locust scenario, with a verdict",
        description="Start the plan's replicas as simulated cards (or use --backends / --gateway), "
        "start the gateway, run loadtest/qps.py at the target rate and print the verdict. "
        "Exit 0: the plan holds; 1: it does not; 2: the run could not judge it.",
    )
    prove.add_argument("plan", type=Path, help="fleet.yaml")
    prove.add_argument("--duration", type=duration, default=60.0, help="of each Locust run")
    prove.add_argument("--target-qps", type=positive(float), help="instead of the plan's")
    prove.add_argument("--cards", type=positive(int), help="instead of the plan's replicas")
    prove.add_argument("--backends", nargs="+", metavar="URL", help="real engines instead of sims")
    prove.add_argument("--gateway", metavar="URL", help="an already running gateway")
    prove.add_argument("--sweep", action="store_true", help="search the highest passing rate")
    prove.add_argument(
        "--check-minimal", action="store_true", help="also show that one card fewer fails"
    )
    prove.add_argument("--report", type=Path, default=Path("report"), help="report directory")
    prove.add_argument("--tokens-per-event", type=positive(int), default=4)


def cmd_prove(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.prove.fleet import FleetError
    from gateway.prove.proof import ProveOptions, prove

    if args.gateway and args.backends:
        raise PlanError("give --gateway or --backends, not both", field="gateway")
    read_text(args.plan)
    options = ProveOptions(
        plan_path=args.plan,
        report=args.report,
        duration_s=args.duration,
        target_qps=args.target_qps,
        cards=args.cards,
        backends=tuple(args.backends or ()),
        gateway=args.gateway,
        sweep=args.sweep,
        check_minimal=args.check_minimal,
        tokens_per_event=args.tokens_per_event,
    )
    try:
        return prove(options, say=lambda line: print(line, flush=True))
    except FleetError as e:
        print(f"cardinal prove: error: {e}", file=sys.stderr)
        return 2
