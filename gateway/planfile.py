"""The plan file (`fleet.yaml`): versioned, validated on load, with errors that name the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

VERSION = 1

# dotted key -> accepted types; every other part of Cardinal reads these.
REQUIRED: dict[str, tuple[type, ...]] = {
    "version": (int,),
    "inputs.model": (str,),
    "inputs.quant": (str,),
    "inputs.gpu": (str,),
    "inputs.engine": (str,),
    "inputs.workload.prompt_tokens": (int,),
    "inputs.workload.output_tokens": (int,),
    "inputs.workload.target_qps": (int, float),
    "inputs.workload.ttft_slo_s": (int, float),
    "inputs.workload.tpot_slo_s": (int, float),
    "inputs.workload.headroom": (int, float),
    "memory.weights_gib": (int, float),
    "fit.kind": (str,),
    "replica.gpus": (int, type(None)),
    "replica.max_batch": (int, type(None)),
    "replica.capacity_qps": (int, float, type(None)),
    "fleet.replicas": (int,),
    "fleet.gpus": (int,),
    "cost.monthly_usd": (int, float, type(None)),
}
POSITIVE = (
    "inputs.workload.prompt_tokens",
    "inputs.workload.output_tokens",
    "inputs.workload.target_qps",
    "inputs.workload.ttft_slo_s",
    "inputs.workload.tpot_slo_s",
)
# dotted key -> (accepted types, bound) of fields a file may leave out: the engine knobs, added
# to version 1 without a new version since a file without them means the engine's defaults
OPTIONAL: dict[str, tuple[tuple[type, ...], str]] = {
    "inputs.gpus_per_replica": ((int, type(None)), "> 0"),
    "inputs.max_num_seqs": ((int, type(None)), "> 0"),
    "inputs.max_num_batched_tokens": ((int, type(None)), "> 0"),
    "inputs.gpu_memory_utilization": ((int, float, type(None)), "in (0, 1]"),
    "inputs.gpu_layers": ((int, type(None)), "> 0"),
    "engine_settings.max_num_batched_tokens": ((int,), "> 0"),
    "engine_settings.gpu_memory_utilization": ((int, float), "in (0, 1]"),
    "replica.batch_limited_by": ((str, type(None)), ""),
}
BOUNDS: dict[str, Callable[[float], bool]] = {
    "> 0": lambda v: v > 0,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "": lambda v: True,
}
FIT_KINDS = ("gpu", "tensor_parallel", "partial_offload", "moe_offload", "none")


class PlanFileError(ValueError):
    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def dump(plan: dict[str, Any]) -> str:
    header = (
        "# Cardinal plan file: written by `cardinal plan -o`, read by render, serve, sim, prove.\n"
    )
    return header + yaml.safe_dump(plan, sort_keys=False, allow_unicode=True)


def load(text: str) -> dict[str, Any]:
    """Parse and validate a plan file's text."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PlanFileError("a plan file must be a YAML mapping", field="(top level)")
    version = data.get("version")
    if version != VERSION:
        raise PlanFileError(
            f"unsupported plan version {version!r}; this Cardinal reads version {VERSION}",
            field="version",
        )
    for key, types in REQUIRED.items():
        _check_type(key, lookup(data, key), types)
    for key, (types, bound) in OPTIONAL.items():
        try:
            value = lookup(data, key)
        except PlanFileError:
            continue
        _check_type(key, value, types)
        if value is not None and not isinstance(value, str) and not BOUNDS[bound](value):
            raise PlanFileError(f"`{key}` must be {bound}, got {value!r}", field=key)
    for key in POSITIVE:
        if not (value := lookup(data, key)) > 0:
            raise PlanFileError(f"`{key}` must be > 0, got {value!r}", field=key)
    if data["fit"]["kind"] not in FIT_KINDS:
        raise PlanFileError(f"`fit.kind` must be one of {', '.join(FIT_KINDS)}", field="fit.kind")
    return data


def _check_type(key: str, value: Any, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, types):
        want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise PlanFileError(f"`{key}` must be {want}, got {value!r}", field=key)


def lookup(
    data: dict[str, Any], dotted: str, *, error: Callable[..., Exception] = PlanFileError
) -> Any:
    """`data["a"]["b"]` for "a.b"; a missing key raises `error` naming the dotted field."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise error(f"`{dotted}` is missing", field=dotted)
        node = node[part]
    return node
