"""`cardinal`: the command table and `main`, the one place that turns an input error into
`cardinal CMD: error: FLAG: message` and exit status 2. The CLI is the only part of Cardinal that
reads argv, files and the environment."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from gateway.cli.args import (
    Parser,
)
from gateway.cli.calibrate import (
    add_calibrate_parser,
    add_calibration_argument,
    cmd_calibrate,
)
from gateway.cli.docs import cmd_accuracy, cmd_catalog, cmd_seeds, cmd_show
from gateway.cli.plan import add_plan_arguments, cmd_plan
from gateway.cli.prove import add_prove_parser, cmd_prove
from gateway.cli.render import add_render_parser, cmd_render
from gateway.cli.search import add_search_arguments
from gateway.cli.serve import add_serve_parser, cmd_serve
from gateway.cli.sim import add_sim_parser, cmd_sim
from gateway.cli.whatif import add_whatif_parser, cmd_whatif
from gateway.errors import FieldError
from gateway.planner.catalog import load_catalog


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="cardinal", description="Size, deploy, prove and watch a self-hosted LLM fleet."
    )
    sub = p.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="size a fleet: memory fit, per-card capacity, cards, cost")
    add_plan_arguments(plan)
    add_search_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("-o", "--output", type=Path, help="write the plan file (fleet.yaml)")
    add_calibration_argument(plan)
    cat = sub.add_parser("catalog", help="list the models, quantizations, GPUs and engines")
    cat.add_argument("kind", nargs="?", choices=["models", "quants", "gpus", "engines"])
    acc = sub.add_parser("check-accuracy", help="print the planner against real reference figures")
    acc.add_argument("--reference", type=Path, help="a reference.csv (default: the bundled copy)")
    acc.add_argument("-o", "--output", type=Path, help="also write the table as markdown here")
    seeds = sub.add_parser("seeds", help="check the seed documents' claims (writes docs/seeds.md)")
    seeds.add_argument("-o", "--output", type=Path, help="write the markdown here")
    add_sim_parser(sub)
    add_serve_parser(sub)
    add_render_parser(sub)
    add_calibrate_parser(sub)
    add_prove_parser(sub)
    add_whatif_parser(sub)
    show = sub.add_parser("show", help="validate a plan file and print its report")
    show.add_argument("plan", type=Path)
    return p


COMMANDS = {
    "plan": cmd_plan,
    "catalog": cmd_catalog,
    "check-accuracy": cmd_accuracy,
    "seeds": cmd_seeds,
    "show": cmd_show,
    "sim": cmd_sim,
    "prove": cmd_prove,
    "serve": cmd_serve,
    "render": cmd_render,
    "calibrate": cmd_calibrate,
    "whatif": cmd_whatif,
}


# a module the core install lacks -> the extra that brings it (pyproject.toml)
EXTRAS = {
    "litellm": "plan",
    "nginx": "plan",
    "locust": "loadtest",
    "matplotlib": "plots",
    "redis": "gateway",
    "uvloop": "gateway",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args, load_catalog())
    except FieldError as e:  # the one place an input error becomes a message and exit 2
        print(f"cardinal {args.command}: error: {e.where()}: {e}", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:
        print(f"cardinal {args.command}: error: not valid YAML: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an extra this install left out (pyproject.toml)
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"cardinal {args.command}: error: this needs {e.name!r}, which the `{extra}` extra "
            f"installs: pip install 'cardinal[{extra}]' (or 'cardinal[all]')",
            file=sys.stderr,
        )
        return 2
