"""`make fit`: the TP engine's step-model constants fitted to serving.csv's `fit` split, printed
beside the values engines.yaml holds (copy them there by hand, with the date)."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from gateway.planner.catalog import load_catalog
from gateway.planner.fitting import DENSE_KNOBS, MOE_KNOBS, TTFT_KNOBS, fit_tp_engine


def write_error_table() -> Path:
    """model_error.yaml from the current step model (what every plan's uncertainty line reads)."""
    from gateway.planner.accuracy import check_all
    from gateway.planner.serving import predict_all
    from gateway.planner.uncertainty import error_table, render_error_table

    catalog = load_catalog()
    path = Path(str(resources.files("gateway.planner").joinpath("data/model_error.yaml")))
    table = error_table(predict_all(catalog), check_all(catalog))
    path.write_text(render_error_table(table), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.calibrate.fit", description=__doc__)
    p.add_argument(
        "--error-table", action="store_true", help="write model_error.yaml instead of fitting"
    )
    if p.parse_args(argv).error_table:
        print(f"wrote {write_error_table()}")
        return 0
    catalog = load_catalog()
    shipped = catalog.engine("vllm")
    for label, res, knobs in zip(
        ("dense", "MoE", "TTFT"),
        fit_tp_engine(catalog),
        (DENSE_KNOBS, MOE_KNOBS, TTFT_KNOBS),
        strict=True,
    ):
        print(f"{label}: {res.rows} rows, loss {res.loss:.4f}")
        for name, (get, _) in knobs.items():
            print(f"  {name}: fitted {res.values[name]:.4g} (engines.yaml {get(shipped):.4g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
