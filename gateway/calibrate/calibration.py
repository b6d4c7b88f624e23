"""The calibration file (`cal.yaml`): one card measured, versioned, validated on load with errors
that name the field. `cardinal calibrate -o` writes it, `cardinal plan --calibration` reads it."""

from __future__ import annotations

import math
from typing import Any

import yaml

from gateway.errors import FieldError
from gateway.planfile import lookup

VERSION = 1
HEADER = (
    "# Cardinal calibration file: one card measured by `cardinal calibrate`, read by\n"
    "# `cardinal plan --calibration` (per-card capacity from the measurement, not the model).\n"
)

# dotted key -> accepted types; `cardinal plan` reads these.
REQUIRED: dict[str, tuple[type, ...]] = {
    "version": (int,),
    "measured_at": (str,),
    "backend.url": (str,),
    "backend.model": (str,),
    "backend.engine": (str,),
    "backend.gpus": (int,),
    "workload.prompt_tokens": (int,),
    "workload.output_tokens": (int,),
    "workload.ttft_slo_s": (int, float),
    "workload.tpot_slo_s": (int, float),
    "decode.method": (str,),
    "decode.points": (list,),
    "prefill.method": (str,),
    "prefill.tokens_per_s": (int, float),
    "capacity.method": (str,),
    "capacity.replica_qps": (int, float),
    "capacity.per_card_qps": (int, float),
    "capacity.trials": (list,),
}
POSITIVE = (
    "backend.gpus",
    "workload.prompt_tokens",
    "workload.output_tokens",
    "workload.ttft_slo_s",
    "workload.tpot_slo_s",
    "prefill.tokens_per_s",
)
POINT = {"batch": (int,), "tokens_per_s": (int, float), "tpot_s": (int, float)}


class CalibrationError(FieldError):
    """A calibration file that is not valid; `field` is the key at fault."""


def dump(data: dict[str, Any]) -> str:
    validate(data)
    return HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def load(text: str) -> dict[str, Any]:
    """Parse and validate a calibration file's text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CalibrationError(f"not valid YAML: {e}", field="(file)") from None
    validate(data)
    return data


def validate(data: Any) -> None:
    if not isinstance(data, dict):
        raise CalibrationError("a calibration file must be a YAML mapping", field="(top level)")
    if data.get("version") != VERSION:
        raise CalibrationError(
            f"unsupported calibration version {data.get('version')!r}; this Cardinal reads "
            f"version {VERSION}",
            field="version",
        )
    for key, types in REQUIRED.items():
        _typed(lookup(data, key, error=CalibrationError), types, key)
    for key in POSITIVE:
        if not (value := lookup(data, key, error=CalibrationError)) > 0:
            raise CalibrationError(f"`{key}` must be > 0, got {value!r}", field=key)
    capacity = data["capacity"]
    if not capacity["per_card_qps"] > 0:
        raise CalibrationError(
            "`capacity.per_card_qps` must be > 0: no rate met the SLOs, so there is no capacity "
            "to plan with (see capacity.trials)",
            field="capacity.per_card_qps",
        )
    for i, point in enumerate(data["decode"]["points"]):
        for key, types in POINT.items():
            where = f"decode.points[{i}].{key}"
            if not isinstance(point, dict) or key not in point:
                raise CalibrationError(f"`{where}` is missing", field=where)
            _typed(point[key], types, where)


def _typed(value: Any, types: tuple[type, ...], key: str) -> None:
    finite = not isinstance(value, float) or math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, types) or not finite:
        want = " or ".join(t.__name__ for t in types)
        raise CalibrationError(f"`{key}` must be {want}, got {value!r}", field=key)
