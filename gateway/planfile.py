"""The plan file (`fleet.yaml`): versioned, validated on load, with errors that name the field."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.errors import FieldError
from gateway.planner.capacity import Workload  # the plan's workload is the planner's

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
WORKLOAD_KEYS = (
    "prompt_tokens",
    "output_tokens",
    "target_qps",
    "ttft_slo_s",
    "tpot_slo_s",
    "headroom",
)
FIT_KINDS = ("gpu", "tensor_parallel", "partial_offload", "moe_offload", "none")


class PlanFileError(FieldError):
    """A plan file that is not valid; `field` is the key at fault."""


def dump(plan: dict[str, Any]) -> str:
    header = (
        "# Cardinal plan file: written by `cardinal plan -o`, read by render, serve, sim, prove.\n"
    )
    return header + yaml.safe_dump(plan, sort_keys=False, allow_unicode=True)


def load(text: str) -> dict[str, Any]:
    """Parse and validate a plan file's text."""
    return validate(yaml.safe_load(text))


def read(text: str) -> PlanFile:
    """Parse and validate a plan file's text into a `PlanFile`."""
    return PlanFile.from_mapping(load(text))


def of(plan: PlanFile | Mapping[str, Any]) -> PlanFile:
    """`plan` as a `PlanFile`; a mapping (as `load` returns) is validated first."""
    return plan if isinstance(plan, PlanFile) else PlanFile.from_mapping(validate(plan))


def validate(data: Any) -> dict[str, Any]:
    """`data` when it is a valid plan file's mapping; else the error names the field."""
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
    if lookup(data, "fit.kind") not in FIT_KINDS:
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


@dataclass(frozen=True, kw_only=True)
class Replica:
    gpus: int | None
    max_batch: int | None
    capacity_qps: float | None


@dataclass(frozen=True, kw_only=True)
class PlanFile:
    """A validated plan file, typed; `data` is the whole mapping, for passing the plan through."""

    model: str
    quant: str
    gpu: str
    engine: str
    inputs: Mapping[str, Any]  # every input, the optional engine knobs included
    workload: Workload
    fit: Mapping[str, Any]
    memory: Mapping[str, Any]
    speed: Mapping[str, Any]
    replica: Replica
    replicas: int
    gpus: int
    engine_settings: Mapping[str, Any]  # empty when the plan does not fit
    data: Mapping[str, Any]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PlanFile:
        """The plan a mapping `validate` accepted describes."""
        inputs, replica = data["inputs"], data["replica"]
        return cls(
            model=inputs["model"],
            quant=inputs["quant"],
            gpu=inputs["gpu"],
            engine=inputs["engine"],
            inputs=inputs,
            workload=Workload(**{k: inputs["workload"][k] for k in WORKLOAD_KEYS}),
            fit=data["fit"],
            memory=data["memory"],
            speed=data.get("speed") or {},
            replica=Replica(**{k: replica[k] for k in ("gpus", "max_batch", "capacity_qps")}),
            replicas=data["fleet"]["replicas"],
            gpus=data["fleet"]["gpus"],
            engine_settings=data.get("engine_settings") or {},
            data=data,
        )

    @property
    def fits(self) -> bool:
        return self.fit["kind"] != "none"

    @property
    def replica_concurrency(self) -> int | None:
        """Requests one replica runs at once: vLLM's max_num_seqs, else llama.cpp's parallel
        (-np), else the planner's max batch; None when the plan names none."""
        s = self.engine_settings
        return s.get("max_num_seqs") or s.get("parallel") or self.replica.max_batch
