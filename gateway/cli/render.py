"""`cardinal render`: the deploy files of a plan."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway import planfile
from gateway.cli.args import (
    positive,
    read_text,
)
from gateway.planner.catalog import Catalog


def add_render_parser(sub: Any) -> None:
    render = sub.add_parser(
        "render",
        help="deploy files from a plan: Compose, nginx, Kubernetes, engine commands, monitoring",
        description="Write the files that turn a plan into a running, watched fleet.",
    )
    render.add_argument("plan", type=Path, help="fleet.yaml")
    render.add_argument("-o", "--output", type=Path, default=Path("deploy"), help="a directory")
    render.add_argument(
        "--sim", action="store_true", help="Compose runs simulated cards; real engines in `gpu`"
    )
    render.add_argument(
        "--replicas", type=positive(int), help="render this many replicas (a demo on one host)"
    )
    render.add_argument(
        "--only", action="append", default=[], metavar="PATH", help="write only these files/dirs"
    )


def cmd_render(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.render.bundle import render_all
    from gateway.render.fleet import scaled

    plan = planfile.load(read_text(args.plan))
    files = render_all(
        scaled(plan, args.replicas) if args.replicas else plan,
        sim=args.sim,
        source=_build_context(args.output),
    )
    only = [o.rstrip("/") for o in args.only]
    for rel, text in files.items():
        if only and not any(rel == o or rel.startswith(o + "/") for o in only):
            continue
        path = args.output / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if rel.endswith(".sh"):
            path.chmod(0o755)
        print(f"wrote {path}")
    if advice := _which_bundle(plan):
        print(advice)
    return 0


def _which_bundle(plan: Any) -> str:
    """A line saying which files to deploy when the plan's at-scale layout is the cheaper one."""
    from gateway.render.sglang import at_scale_layout

    layout = at_scale_layout(plan)
    tp = planfile.of(plan).gpus
    if layout is None or not tp or layout["gpus"] >= tp:
        return ""
    return (
        f"the plan's cheapest layout is at scale: {layout['layout']} on {layout['gpus']} GPUs; "
        f"deploy sglang/ (or vllm-ep/) rather than the tensor-parallel files ({tp} GPUs)"
    )


def _build_context(output: Path) -> str:
    """The repository (where the cardinal image is built from), relative to the output dir."""
    import os

    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():  # installed, not a checkout: build from the output
        return "."
    return os.path.relpath(root, output.resolve())
