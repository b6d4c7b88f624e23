"""Measured serving points (serving.csv: fixed-concurrency benchmark runs on real engines) and the
step model's prediction of each: TPOT, TTFT and output throughput under that load."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from gateway.planner.capacity import Workload, md1_wait, tpot_with_prefill
from gateway.planner.catalog import Catalog, Engine, data_csv
from gateway.planner.errors import PlanError
from gateway.planner.plan import laid_out, request_for
from gateway.planner.speed import SpeedModel

# Engine families the accuracy is reported and gated for: (engine, dense or MoE)
FAMILIES = {
    ("vllm", False): "dense vLLM",
    ("vllm", True): "MoE vLLM",
    ("sglang", False): "dense SGLang",
    ("sglang", True): "MoE SGLang",
}


@dataclass(frozen=True, kw_only=True)
class ServingRow:
    id: str
    engine: str  # the engine that measured it (vllm, sglang)
    engine_version: str
    model: str
    quant: str
    gpu: str
    tp: int
    isl: int
    osl: int
    concurrency: int
    ttft_s: float
    tpot_s: float
    split: str  # fit | held_out
    source: str

    @property
    def throughput(self) -> float:
        return closed_loop_throughput(self, ttft_s=self.ttft_s, tpot_s=self.tpot_s)


def closed_loop_throughput(row: ServingRow, *, ttft_s: float, tpot_s: float) -> float:
    """Output tokens/s of the replica: `concurrency` requests each lasting TTFT + (O-1) TPOT."""
    return row.concurrency * row.osl / (ttft_s + (row.osl - 1) * tpot_s)


@dataclass(frozen=True, kw_only=True)
class Prediction:
    row: ServingRow
    family: str
    tpot_s: float | None = None
    ttft_s: float | None = None
    prompt_share: float | None = None  # measured_prompt_share(): a check on the row itself
    note: str = ""  # why a row is not modelled

    @property
    def throughput(self) -> float | None:
        if self.tpot_s is None or self.ttft_s is None:
            return None
        return closed_loop_throughput(self.row, ttft_s=self.ttft_s, tpot_s=self.tpot_s)

    def error(self, kind: str) -> float | None:
        pred = {"tpot": self.tpot_s, "ttft": self.ttft_s, "throughput": self.throughput}[kind]
        real = {"tpot": self.row.tpot_s, "ttft": self.row.ttft_s, "throughput": self.row.throughput}
        return None if pred is None else (pred - real[kind]) / real[kind]


def read_serving_rows(text: str | None = None) -> list[ServingRow]:
    return [
        ServingRow(
            id=r["id"],
            engine=r["engine"],
            engine_version=r["engine_version"],
            model=r["model"],
            quant=r["quant"],
            gpu=r["gpu"],
            tp=int(r["tp"]),
            isl=int(r["isl"]),
            osl=int(r["osl"]),
            concurrency=int(r["concurrency"]),
            ttft_s=float(r["ttft_ms"]) / 1e3,
            tpot_s=float(r["tpot_ms"]) / 1e3,
            split=r["split"],
            source=r["source"],
        )
        for r in data_csv("serving.csv", text)
    ]


@dataclass(frozen=True, kw_only=True)
class Setup:
    """A row's replica as the planner lays it out: the speed model and the KV it holds."""

    speed: SpeedModel
    kv_tokens: int
    moe: bool


def setup(catalog: Catalog, row: ServingRow, *, estimator: str = "roofline") -> Setup | str:
    """The row's replica on Cardinal's TP engine, timed by `estimator` (roofline | profiled), or
    why it cannot be modelled."""
    try:
        model = catalog.model(row.model)
        wl = Workload(
            prompt_tokens=row.isl, output_tokens=row.osl, target_qps=1, ttft_slo_s=1, tpot_slo_s=1
        )
        req = request_for(
            catalog,
            model=model,
            quant=row.quant,
            gpu=row.gpu,
            engine="vllm",
            workload=wl,
            gpus_per_replica=row.tp,
        )
    except (PlanError, KeyError) as e:
        return f"not in the catalog: {e}"
    fit, speed = laid_out(req, catalog)
    if speed is None:
        return f"does not fit in the planner: {fit.reason}"
    if estimator == "profiled":
        from gateway.planner.profiled import NotProfiled, profiled  # noqa: PLC0415 - optional

        try:
            speed = profiled(speed)
        except NotProfiled as e:
            return f"not profiled: {e}"
    return Setup(speed=speed, kv_tokens=fit.kv_tokens, moe=bool(model.moe))


def predict(s: Setup, row: ServingRow, *, engine: Engine | None = None) -> tuple[float, float]:
    """(TPOT, TTFT) of `row.concurrency` closed-loop clients, in steady state.

    Every running sequence decodes one token per step and, with chunked prefill, also waits for
    the prompts admitted into its steps: over one request's life each of the other clients sends
    one new prompt, so TPOT = t_step(B) + B x t_prefill / O (capacity.tpot_with_prefill).

    TTFT: a new prompt waits on average half a step for the step in flight to end, then behind
    the prompts ahead of it (one prefill at a time, M/D/1 at the rate B / request life), is
    computed inside the next step, and its first token comes the engine's per-request overhead
    later (SpeedModel.first_token_overhead_s).

    The engines allocate KV as tokens are computed, so all C clients are admitted at once and a
    sequence holds isl + osl / 2 tokens on average: past the KV cache only the batch B that fits
    decodes while the others wait preempted, after their first token (TTFT does not see it): each
    client decodes B / C of the time and its TPOT is C / B times the running batch's.
    """
    speed = s.speed if engine is None else replace(s.speed, engine=engine)
    b = max(1, min(row.concurrency, int(s.kv_tokens // (row.isl + row.osl / 2))))
    step = speed.decode_step_s(batch=b, ctx=row.isl + row.osl / 2)
    prefill = speed.prefill_s(row.isl)
    tpot = tpot_with_prefill(step_s=step, prefill_s=prefill, batch=b, output_tokens=row.osl)
    service = prefill + step  # one prompt's turn: its step carries the whole prefill
    bare = prefill + 1.5 * step + speed.first_token_overhead_s()
    ttft = bare
    for _ in range(8):  # fixed point: the prompt rate depends on the request life it produces
        life = ttft + (row.osl - 1) * tpot
        ttft = bare + md1_wait(rate=b / life, service_s=service, max_utilization=0.95)
    # past the KV cache the clients take turns: each decodes B / C of the time
    return tpot * max(row.concurrency / b, 1.0), ttft


def predict_all(
    catalog: Catalog, rows: list[ServingRow] | None = None, *, estimator: str = "roofline"
) -> list[Prediction]:
    out = []
    for row in rows if rows is not None else read_serving_rows():
        s = setup(catalog, row, estimator=estimator)
        if isinstance(s, str):
            out.append(Prediction(row=row, family=_family(row, moe=False), note=s))
            continue
        tpot, ttft = predict(s, row)
        out.append(
            Prediction(
                row=row,
                family=_family(row, moe=s.moe),
                tpot_s=tpot,
                ttft_s=ttft,
                prompt_share=measured_prompt_share(s.speed, row),
            )
        )
    return out


def measured_prompt_share(speed: SpeedModel, row: ServingRow) -> float:
    """The GPUs' peak FLOP/s that the row's own figures need for its prompts alone: requests per
    second (C / (TTFT + (O-1) TPOT)) x 2 x active parameters x prompt tokens, over TP x peak.
    Engines reach about half of peak on prefill (engines.yaml prefill_eta), so a share near or
    above that, with decode in the same steps, says the prompts were not all computed (prefix
    cache hits between the benchmark's runs), which no step model can reproduce."""
    rate = row.concurrency / (row.ttft_s + (row.osl - 1) * row.tpot_s)
    peak = speed.gpu.peak_tflops(speed.quant.compute) * 1e12
    return rate * 2 * speed.active_params * row.isl / (row.tp * peak)


def _family(row: ServingRow, *, moe: bool) -> str:
    return FAMILIES.get((row.engine, moe), row.engine)


@dataclass(frozen=True, kw_only=True)
class Accuracy:
    family: str
    split: str
    kind: str  # tpot | ttft | throughput
    n: int
    median: float  # of |error|
    max: float
    bias: float  # median signed error: > 0 means the model is optimistic on throughput


def accuracy(preds: list[Prediction]) -> list[Accuracy]:
    """|error| per family x split x kind, over the modelled rows."""
    out = []
    keys = sorted({(p.family, p.row.split) for p in preds if p.tpot_s is not None})
    for family, split in keys:
        group = [p for p in preds if p.family == family and p.row.split == split]
        for kind in ("tpot", "ttft", "throughput"):
            errs = [e for p in group if (e := p.error(kind)) is not None]
            if not errs:
                continue
            out.append(
                Accuracy(
                    family=family,
                    split=split,
                    kind=kind,
                    n=len(errs),
                    median=statistics.median(abs(e) for e in errs),
                    max=max(abs(e) for e in errs),
                    bias=statistics.median(errs),
                )
            )
    return out
