"""`make fit`: the TP engine's step-model constants fitted to serving.csv's `fit` split, printed
beside the values engines.yaml holds (copy them there by hand, with the date)."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from gateway.planner.catalog import load_catalog
from gateway.planner.fitting import DENSE_KNOBS, MOE_KNOBS, fit_engine
from gateway.planner.serving import read_serving_rows


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
    if (argv if argv is not None else sys.argv[1:]) == ["--error-table"]:
        print(f"wrote {write_error_table()}")
        return 0
    catalog = load_catalog()
    rows = [r for r in read_serving_rows() if r.split == "fit"]
    dense = [r for r in rows if not catalog.model(r.model).moe]
    moe = [r for r in rows if catalog.model(r.model).moe]
    start = catalog.engine("vllm")
    d = fit_engine(catalog, dense, knobs=DENSE_KNOBS, engine=start)
    m = fit_engine(catalog, moe, knobs=MOE_KNOBS, engine=d.engine)
    for label, res, knobs in (("dense", d, DENSE_KNOBS), ("MoE", m, MOE_KNOBS)):
        print(f"{label}: {res.rows} rows, mean squared log error {res.loss:.4f}")
        for name, (get, _) in knobs.items():
            print(f"  {name}: fitted {res.values[name]:.4g} (engines.yaml {get(start):.4g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
