"""The planner held against real, sourced figures (calibration reference.csv)."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, replace

from gateway.planner.capacity import Workload
from gateway.planner.catalog import Catalog, Engine, Gpu, Model, Quant, data_csv
from gateway.planner.errors import PlanError
from gateway.planner.fit import GIB
from gateway.planner.plan import PlanRequest, laid_out
from gateway.planner.speed import SpeedModel
from gateway.planner.tensors import param_count
from gateway.planner.weights import weights

UNITS = {"GiB": GIB, "GB": 1e9, "bytes": 1.0}


@dataclass(frozen=True, kw_only=True)
class Row:
    kind: str
    model: str
    quant: str
    gpu: str
    setting: str
    value: float
    unit: str
    source: str


@dataclass(frozen=True, kw_only=True)
class Check:
    row: Row
    predicted: float | None
    note: str = ""  # why a row is not modelled, or (with a prediction) left out of the summary

    @property
    def error(self) -> float | None:
        if self.predicted is None:
            return None
        return (self.predicted - self.row.value) / self.row.value


def read_rows(text: str | None = None) -> list[Row]:
    """Rows of reference.csv (the copy bundled with the planner unless `text` is given)."""
    return [
        Row(
            kind=r["kind"],
            model=r["model"],
            quant=r["quant"],
            gpu=r["gpu"],
            setting=r["setting"],
            value=float(r["value"]),
            unit=r["unit"],
            source=r["source"],
        )
        for r in data_csv("reference.csv", text)
    ]


def check_all(catalog: Catalog, rows: list[Row] | None = None) -> list[Check]:
    return [check(catalog, r) for r in (rows if rows is not None else read_rows())]


def check(catalog: Catalog, row: Row) -> Check:
    try:
        if row.kind == "size":
            return _size(catalog, row)
        if row.kind in ("decode_tps", "prefill_tps", "throughput"):
            return _speed(catalog, row)
    except NotModelled as e:
        return Check(row=row, predicted=None, note=str(e))
    return Check(row=row, predicted=None, note=f"kind {row.kind!r} not checked")


class NotModelled(Exception):
    pass


class NotInCatalog(NotModelled):
    """A row names a model, quantization or GPU the catalog does not have."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not in the catalog")
        self.what = what  # e.g. "GPU 'V100'"


def _strip(s: str) -> str:
    return re.sub(r"\(.*?\)", "", s).strip()


def _model(catalog: Catalog, row: Row) -> Model:
    return catalog_model(catalog, row.model)


def catalog_model(catalog: Catalog, text: str) -> Model:
    """The catalog model a source names ("DeepSeek-R1 (671B)"); NotInCatalog if none."""
    try:
        return catalog.model(_strip(text))
    except PlanError:
        raise NotInCatalog(f"model {text!r}") from None


def _quant(catalog: Catalog, row: Row, *, gguf: bool) -> Quant:
    q = row.quant
    if q.startswith("UD-") or "mix" in q:
        raise NotModelled("custom per-tensor recipe, not a llama-quantize type")
    return catalog_quant(catalog, q, gguf=gguf)


def catalog_quant(catalog: Catalog, text: str, *, gguf: bool) -> Quant:
    """The catalog quantization a source names ("AWQ 4-bit", "F16" of a GGUF file)."""
    name = _strip(text).replace(" 4-bit", "").lower()
    if gguf and name in ("f16", "f32"):
        name = f"{name}-gguf"
    try:
        return catalog.quant(name)
    except PlanError:
        raise NotInCatalog(f"quant {text!r}") from None


def _size(catalog: Catalog, row: Row) -> Check:
    model = _model(catalog, row)
    if row.unit == "B params":
        return Check(row=row, predicted=param_count(model, include_mtp=True) / 1e9)
    gguf = _strip(row.quant) not in ("FP8", "BF16", "FP16")  # the others are GGUF file sizes
    w = weights(model, _quant(catalog, row, gguf=gguf), catalog)
    return Check(row=row, predicted=w.total_bytes / UNITS[row.unit])


def catalog_gpu(catalog: Catalog, text: str) -> tuple[Gpu, int]:
    """The catalog GPU a source names and how many: "4x RTX 3090 + CPU" -> (RTX 3090, 4)."""
    m = re.match(r"^\s*(\d+)\s*x\s*(.*)$", text)
    count, rest = (int(m.group(1)), m.group(2)) if m else (1, text)
    rest = re.sub(r"\+ CPU|TP\d+| node", "", _strip(rest)).strip()
    try:
        return catalog.gpu(rest), count
    except PlanError:
        raise NotInCatalog(f"GPU {text!r}") from None


def _engine_id(setting: str) -> str:
    s = setting.lower()
    if "mtp" in s:
        raise NotModelled("speculative decoding (MTP draft layers) is not modelled")
    if "sglang" in s or "trtllm-bench" in s or "tensorrt-llm" in s:
        raise NotModelled(
            "engine (SGLang / TensorRT-LLM at max load or with expert parallelism) is not modelled"
        )
    if "sharegpt" in s:
        raise NotModelled("ShareGPT prompt/output length mix is not given")
    if "llama" in s or "vulkan" in s:
        return "llama.cpp"
    if "fastertransformer" in s:
        raise NotModelled("FasterTransformer is not modelled")
    return "vllm"  # vLLM, and NVIDIA NIM (a TP serving engine with CUDA graphs)


def _numbers(setting: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, pat in (
        ("tg", r"tg(\d+)"),
        ("pp", r"pp(\d+)"),
        ("ngl", r"-ngl (\d+)"),
        ("in", r"in (\d+)"),
        ("out", r"out (\d+)"),
        ("conc", r"concurrency ~?(\d+)"),
        ("tp", r"TP(\d+)"),
    ):
        m = re.search(pat, setting)
        if m:
            out[key] = int(m.group(1))
    return out


@dataclass(frozen=True, kw_only=True)
class SpeedCase:
    """A speed row's replica as the planner lays it out."""

    row: Row
    speed: SpeedModel
    numbers: dict[str, int]
    prompt: int
    out: int
    moe: bool

    def check(self, engine: Engine | None = None) -> Check:
        sp = self.speed if engine is None else replace(self.speed, engine=engine)
        check = _speed_check(self.row, sp, self.numbers, prompt=self.prompt, out=self.out)
        if self.moe and re.search(r"vLLM 0\.[0-7]\.", self.row.setting):
            return replace(check, note=OLD_MOE_ENGINE)
        return check


def speed_case(catalog: Catalog, row: Row) -> SpeedCase:
    """Raises NotModelled with the reason when the planner cannot lay the row out."""
    engine = catalog.engine(_engine_id(row.setting))
    model = _model(catalog, row)
    quant = _quant(catalog, row, gguf=engine.id == "llama.cpp")
    gpu, count = catalog_gpu(catalog, row.gpu)
    n = _numbers(row.setting)
    prompt = n.get("pp") or n.get("in") or 1
    out = n.get("out") or n.get("tg") or 128
    wl = Workload(prompt_tokens=prompt, output_tokens=out, target_qps=1, ttft_slo_s=1, tpot_slo_s=1)
    req = PlanRequest(
        model=model,
        quant=quant,
        gpu=gpu,
        engine=engine,
        workload=wl,
        gpus_per_replica=n.get("tp") or count,
        gpu_layers=n.get("ngl"),
    )
    fit, sp = laid_out(req, catalog)
    if sp is None:
        raise NotModelled(f"does not fit in the planner: {fit.reason}")
    return SpeedCase(row=row, speed=sp, numbers=n, prompt=prompt, out=out, moe=bool(model.moe))


def _speed(catalog: Catalog, row: Row) -> Check:
    return speed_case(catalog, row).check()


# The step model's MoE constants are fitted to current engines (serving.csv: SGLang 0.5, vLLM
# 0.12+); vLLM 0.7's DeepSeek path ran several times slower, so its rows are shown, not summarised.
OLD_MOE_ENGINE = (
    "vLLM 0.7 MoE kernels, before the engines the step model is fitted to: not summarised"
)


def _speed_check(row: Row, sp: SpeedModel, n: dict[str, int], *, prompt: int, out: int) -> Check:
    if row.kind == "prefill_tps":
        return Check(row=row, predicted=prompt / sp.prefill_s(prompt))
    if row.kind == "decode_tps":
        ctx = prompt + out / 2 if "in" in n else out / 2
        return Check(row=row, predicted=1 / sp.decode_step_s(batch=1, ctx=ctx))
    conc = n.get("conc")
    if not conc:
        raise NotModelled("concurrency not given")
    step = sp.decode_step_s(batch=conc, ctx=prompt + out / 2)
    per_request = sp.prefill_s(prompt) + out * step / conc
    return Check(row=row, predicted=out / per_request)


def summary(checks: list[Check], kind: str) -> dict[str, float | int | None]:
    errs = [
        abs(c.error) for c in checks if c.row.kind == kind and c.error is not None and not c.note
    ]
    skipped = sum(1 for c in checks if c.row.kind == kind and (c.error is None or c.note))
    return {
        "rows": len(errs),
        "not_modelled": skipped,
        "median_abs_error": statistics.median(errs) if errs else None,
        "max_abs_error": max(errs) if errs else None,
    }
