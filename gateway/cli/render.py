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
from gateway.errors import UsageError
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
    render.add_argument(
        "--image",
        metavar="NAME",
        help="the gateway image to pull (e.g. registry.example/cardinal:0.1.0; built from the "
        "repository's Dockerfile); default: build it from DIR/cardinal-image/, which render writes",
    )


def cmd_render(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.render.bundle import render_all
    from gateway.render.compose import BUILT, GatewayImage
    from gateway.render.fleet import scaled

    plan = planfile.load(read_text(args.plan))
    image = GatewayImage(args.image, context=None) if args.image else BUILT
    if image.context is not None and args.output.resolve() == REPOSITORY:
        image = GatewayImage(context=".")  # the repository's own files: its Dockerfile is here
    files = render_all(
        scaled(plan, args.replicas) if args.replicas else plan, sim=args.sim, image=image
    )
    only = [o.rstrip("/") for o in args.only]
    if image.context is not None and (not only or any(o == image.context for o in only)):
        _write_build_context(args.output / image.context)
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


REPOSITORY = Path(__file__).resolve().parents[2]  # a checkout's root, when it is one
BUILD_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
BUILD_DIRS = ("gateway", "loadtest")


def _write_build_context(where: Path) -> None:
    """The gateway image's build context: the repository's Dockerfile and the source it installs,
    so the rendered folder builds wherever it is copied to."""
    import shutil

    root = REPOSITORY
    if not all((root / f).is_file() for f in BUILD_FILES):
        raise UsageError(
            "this Cardinal is installed without its repository, so there is no Dockerfile to "
            "build the gateway image from: give the image to run, built from Cardinal's "
            "repository (docker build -t NAME .)",
            field="--image",
        )
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    for name in BUILD_FILES:
        shutil.copy2(root / name, where / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUILD_DIRS:
        shutil.copytree(root / name, where / name, ignore=skip)
    print(f"wrote {where}/ (the gateway image's build context: Dockerfile and Cardinal's source)")
