"""`make fit`: the TP engine's step-model constants fitted to serving.csv's `fit` split, and the
at-scale ones to scale_reference.csv's, printed beside the values engines.yaml and scale.yaml
hold (copy them there by hand, with the date)."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from gateway.planner.catalog import load_catalog
from gateway.planner.fitting import (
    DENSE_KNOBS,
    MOE_KNOBS,
    PROFILED_KNOBS,
    SCALE_KNOBS,
    TTFT_KNOBS,
    fit_profiled,
    fit_scale,
    fit_tp_engine,
)
from gateway.planner.profiled import installed
from gateway.planner.scale import load_knobs


def write_error_table() -> Path:
    """model_error.yaml from the current step model (what every plan's uncertainty line reads)."""
    from gateway.planner.uncertainty import measured_error_table, render_error_table

    path = Path(str(resources.files("gateway.planner").joinpath("data/model_error.yaml")))
    path.write_text(render_error_table(measured_error_table(load_catalog())), encoding="utf-8")
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
    res = fit_scale(catalog)
    print(f"at scale (EP/DP, PD): {res.rows} rows, loss {res.loss:.4f}")
    shipped_scale = load_knobs()
    for name in SCALE_KNOBS:
        held = getattr(shipped_scale, name)
        print(f"  {name}: fitted {res.values[name]:.4g} (scale.yaml {held:.4g})")
    if installed():
        res = fit_profiled(catalog)
        print(f"profiled: {res.rows} rows, loss {res.loss:.4f}")
        for name, (get, _) in PROFILED_KNOBS.items():
            print(f"  {name}: fitted {res.values[name]:.4g} (engines.yaml {get(shipped):.4g})")
    else:
        print("profiled: not fitted (aiconfigurator-core is not installed: cardinal[profiled])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
