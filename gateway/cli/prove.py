"""`cardinal prove`: a plan's cards and gateway under the Locust scenario, with a verdict."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.cli.args import (
    duration,
    http_url,
    positive,
    read_text,
)
from gateway.planner.catalog import Catalog
from gateway.planner.errors import PlanError


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
    prove.add_argument(
        "--backends", nargs="+", type=http_url, metavar="URL", help="real engines instead of sims"
    )
    prove.add_argument("--gateway", type=http_url, metavar="URL", help="an already running gateway")
    prove.add_argument("--sweep", action="store_true", help="search the highest passing rate")
    prove.add_argument(
        "--check-minimal", action="store_true", help="also show that one card fewer fails"
    )
    prove.add_argument("--report", type=Path, default=Path("report"), help="report directory")
    prove.add_argument("--tokens-per-event", type=positive(int), default=4)
    prove.add_argument(
        "--policy",
        choices=("round_robin", "least_outstanding", "engine_aware", "affinity"),
        help="the gateway's routing (default: the rendered config's)",
    )
    prove.add_argument(
        "--trace", type=Path, help="replay this trace's arrivals and lengths (Azure CSV or "
        "JSONL), scaled to the target rate: the traffic `cardinal whatif --trace` runs",
    )  # fmt: skip
    prove.add_argument(
        "--at-scale",
        action="store_true",
        help="prove the plan's at-scale layout (EP groups, or PD prefill and decode workers) "
        "instead of its replicas; --cards then counts decode workers or EP groups",
    )


def cmd_prove(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.prove.fleet import FleetError, new_run
    from gateway.prove.proof import ProveOptions, prove

    if args.trace:
        from loadtest import tracefile

        if args.at_scale:
            raise PlanError("--trace replays on the plan's replicas, not --at-scale", field="trace")
    if args.policy and (args.at_scale or args.gateway):
        what = "--at-scale" if args.at_scale else "--gateway"
        raise PlanError(f"--policy configures the gateway prove starts, not {what}", field="policy")
        try:
            tracefile.read(str(args.trace))
        except tracefile.TraceError as e:
            raise PlanError(str(e), field="trace") from None
    if args.gateway and args.backends:
        raise PlanError("give --gateway or --backends, not both", field="gateway")
    if args.cards and args.backends and args.cards != len(args.backends):
        # the run would use every backend while its report and per-card figures said N
        raise PlanError(
            f"{args.cards} cards but {len(args.backends)} --backends: give one or the other, "
            "or as many backends as cards",
            field="cards",
        )
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
        at_scale=args.at_scale,
        tokens_per_event=args.tokens_per_event,
        trace=args.trace,
        policy=args.policy,
    )
    new_run()
    previous = {s: signal.signal(s, _interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return prove(options, say=lambda line: print(line, flush=True))
    except FleetError as e:
        print(f"cardinal prove: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        # Locust, the cards and the gateway are stopped by now (stop_all, then each context)
        print("cardinal prove: interrupted: no verdict", file=sys.stderr)
        return 128 + e.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a proof (BaseException, as KeyboardInterrupt: no `except
    Exception` on the way may judge a half-run)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupted(signum: int, _frame: Any) -> None:
    """Installed even where the shell started prove with SIGINT ignored (a background job):
    stop every child at once, then unwind without a verdict."""
    from gateway.prove.fleet import stop_all

    if stop_all():
        raise Interrupted(signum)
