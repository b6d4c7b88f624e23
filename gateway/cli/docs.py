"""`cardinal catalog`, `show`, `check-accuracy`, `seeds`: what the planner knows and measures."""

from __future__ import annotations

import argparse
from typing import Any

from gateway import planfile
from gateway.cli.args import (
    read_text,
    write_text,
)
from gateway.cli.calibrate import (
    calibration_text,
)
from gateway.planner.accuracy import check_all, summary
from gateway.planner.catalog import Catalog
from gateway.planner.report import render_text
from gateway.reports.accuracy import ACCURACY_HEADER, render_document


def cmd_catalog(args: argparse.Namespace, catalog: Catalog) -> int:
    kinds = [args.kind] if args.kind else ["models", "quants", "gpus", "engines"]
    for kind in kinds:
        print(f"{kind}:")
        for key, entry in getattr(catalog, kind).items():
            print(f"  {key:34} {_describe(kind, entry)}")
        print()
    return 0


def _describe(kind: str, e: Any) -> str:
    if kind == "models":
        arch = "MoE+MLA" if e.mla else ("MoE" if e.moe else "dense")
        return f"{e.name} ({arch}, {e.num_layers} layers, context {e.max_context})"
    if kind == "quants":
        return f"{e.name} [{e.format}]"
    if kind == "gpus":
        price = "no price" if e.price_usd_per_hour is None else f"${e.price_usd_per_hour:g}/h"
        ref = " (reference only)" if e.reference_only else ""
        return f"{e.name}: {e.memory_gib:g} GiB, {e.bandwidth_gb_s:g} GB/s, {price}{ref}"
    return e.name


def cmd_accuracy(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.planner.accuracy import read_rows

    rows = read_rows(args.reference.read_text(encoding="utf-8")) if args.reference else None
    checks = check_all(catalog, rows)
    table = render_document(catalog, checks)
    print(table, end="")
    if args.output:
        write_text(args.output, ACCURACY_HEADER + table)
    size, decode = summary(checks, "size"), summary(checks, "decode_tps")
    ok = (
        (size["median_abs_error"] or 1) <= 0.03
        and (size["max_abs_error"] or 1) <= 0.08
        and (decode["median_abs_error"] or 1) <= 0.25
    )
    print(
        f"\ntargets (size median <= 3 %, every size row <= 8 %, decode median <= 25 %): "
        f"{'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


def cmd_seeds(args: argparse.Namespace, catalog: Catalog) -> int:
    from gateway.reports.seeds import render_seeds

    text = render_seeds(catalog)
    if args.output:
        write_text(args.output, text)
        print(f"written to {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_show(args: argparse.Namespace, catalog: Catalog) -> int:
    data = planfile.load(read_text(args.plan))
    print(render_text(data) + calibration_text(data), end="")
    return 0
