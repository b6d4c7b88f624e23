"""The plan file (`fleet.yaml`): versioned, validated on load, with errors that name the field."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.errors import FieldError
from gateway.planner.capacity import Workload  # the plan's workload is the planner's
from gateway.planner.catalog import load_catalog
from gateway.planner.errors import PlanError
from gateway.planner.request import ENGINE_KV_DTYPES

VERSION = 1

NONE = type(None)
# dotted key -> (accepted types, bound); every other part of Cardinal reads these.
REQUIRED: dict[str, tuple[tuple[type, ...], str]] = {
    "version": ((int,), ""),
    "inputs.model": ((str,), ""),
    "inputs.quant": ((str,), ""),
    "inputs.gpu": ((str,), ""),
    "inputs.engine": ((str,), ""),
    "inputs.workload.prompt_tokens": ((int,), "> 0"),
    "inputs.workload.output_tokens": ((int,), "> 0"),
    "inputs.workload.target_qps": ((int, float), "> 0"),
    "inputs.workload.ttft_slo_s": ((int, float), "> 0"),
    "inputs.workload.tpot_slo_s": ((int, float), "> 0"),
    "inputs.workload.headroom": ((int, float), ">= 0"),
    "memory.weights_gib": ((int, float), "> 0"),
    "fit.kind": ((str,), ""),
    "replica.gpus": ((int, NONE), "> 0"),
    "replica.max_batch": ((int, NONE), "> 0"),
    "replica.capacity_qps": ((int, float, NONE), "> 0"),
    "fleet.replicas": ((int,), ">= 0"),
    "fleet.gpus": ((int,), ">= 0"),
    "cost.monthly_usd": ((int, float, NONE), ">= 0"),
}
# dotted key -> (accepted types, bound) of fields a file may leave out: the engine knobs, added
# to version 1 without a new version since a file without them means the engine's defaults
OPTIONAL: dict[str, tuple[tuple[type, ...], str]] = {
    "inputs.gpus_per_replica": ((int, NONE), "> 0"),
    "inputs.max_num_seqs": ((int, NONE), "> 0"),
    "inputs.max_num_batched_tokens": ((int, NONE), "> 0"),
    "inputs.gpu_memory_utilization": ((int, float, NONE), "in (0, 1]"),
    "inputs.gpu_layers": ((int, NONE), ">= 0"),
    "inputs.gpu_price_usd_per_hour": ((int, float, NONE), ">= 0"),
    "inputs.per_card_qps": ((int, float, NONE), "> 0"),
    "inputs.cpu_bandwidth_gb_s": ((int, float, NONE), "> 0"),
    "replica.batch_limited_by": ((str, NONE), ""),
}
# engine_settings of a plan that fits, by engine: what render, sim and prove start engines with
# (the required keys are read as such; the optional ones were added within version 1)
ENGINE_SETTINGS: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "vllm": {
        "tensor_parallel_size": ((int,), "> 0"),
        "pipeline_parallel_size": ((int,), "> 0"),
        "max_num_seqs": ((int,), "> 0"),
        "max_model_len": ((int,), "> 0"),
        "gpu_memory_utilization": ((int, float), "in (0, 1]"),
        "kv_cache_dtype": ((str,), ""),
    },
    "llama.cpp": {
        "gpu_layers": ((int, NONE), ">= 0"),
        "parallel": ((int,), "> 0"),
        "ctx_size": ((int,), "> 0"),
        "cache_type": ((str,), ""),
    },
}
ENGINE_SETTINGS_OPTIONAL: dict[str, tuple[tuple[type, ...], str]] = {
    "max_num_batched_tokens": ((int,), "> 0"),
    "n_cpu_moe": ((int, NONE), ">= 0"),
    "split_gpus": ((int,), "> 0"),
    "flash_attn": ((bool,), ""),
}
BOUNDS: dict[str, Callable[[float], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
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
    for key, rule in REQUIRED.items():
        _check(key, lookup(data, key), rule)
    for key, rule in OPTIONAL.items():
        if _has(data, key):
            _check(key, lookup(data, key), rule)
    if lookup(data, "fit.kind") not in FIT_KINDS:
        raise PlanFileError(f"`fit.kind` must be one of {', '.join(FIT_KINDS)}", field="fit.kind")
    _check_catalog(data["inputs"])
    if lookup(data, "fit.kind") != "none":
        _check_engine_settings(data)
    return data


def _check_catalog(inputs: dict[str, Any]) -> None:
    """The GPU, quantization and engine are the catalog's (the model may be any config.json)."""
    catalog = load_catalog()
    for kind, find in (("gpu", catalog.gpu), ("quant", catalog.quant), ("engine", catalog.engine)):
        try:
            find(inputs[kind])
        except PlanError as e:
            raise PlanFileError(f"`inputs.{kind}`: {e}", field=f"inputs.{kind}") from None


def _check_engine_settings(data: dict[str, Any]) -> None:
    """What each replica's engine is started with: every flag the engine needs, in range, and a
    KV cache type that engine has."""
    settings = data.get("engine_settings")
    if not isinstance(settings, dict):
        raise PlanFileError(
            f"`engine_settings` must be a mapping for a plan that fits, got {settings!r}",
            field="engine_settings",
        )
    engine = load_catalog().engine(data["inputs"]["engine"]).id
    for name, rule in ENGINE_SETTINGS.get(engine, {}).items():
        _check(f"engine_settings.{name}", lookup(data, f"engine_settings.{name}"), rule)
    for name, rule in ENGINE_SETTINGS_OPTIONAL.items():
        if name in settings:
            _check(f"engine_settings.{name}", settings[name], rule)
    key = "kv_cache_dtype" if engine == "vllm" else "cache_type"
    dtypes = ENGINE_KV_DTYPES.get(engine, ())
    if key in settings and settings[key] not in dtypes:
        raise PlanFileError(
            f"`engine_settings.{key}` must be one of {', '.join(dtypes)} for {engine}, "
            f"got {settings[key]!r}",
            field=f"engine_settings.{key}",
        )


def _has(data: dict[str, Any], dotted: str) -> bool:
    try:
        lookup(data, dotted)
    except PlanFileError:
        return False
    return True


def _check(key: str, value: Any, rule: tuple[tuple[type, ...], str]) -> None:
    """`value` is of one of the types (a bool is no number) and within the bound."""
    types, bound = rule
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        want = " or ".join("null" if t is NONE else t.__name__ for t in types)
        raise PlanFileError(f"`{key}` must be {want}, got {value!r}", field=key)
    if isinstance(value, int | float) and not isinstance(value, bool) and not BOUNDS[bound](value):
        raise PlanFileError(f"`{key}` must be {bound}, got {value!r}", field=key)


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
