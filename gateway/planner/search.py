"""Which fleet is cheapest: every GPU x quantization x engine x parallel degree, planned and ranked.

Each combination is planned at one forced number of GPUs per replica (tensor parallel for vLLM,
layer split or offload for llama.cpp); those that meet the SLOs are ranked by monthly cost, and
every other one is rejected with one reason.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.planner.capacity import HOURS_PER_MONTH, Workload
from gateway.planner.catalog import Catalog, Engine, Gpu, Model, Quant
from gateway.planner.errors import PlanError
from gateway.planner.fit import fit_options
from gateway.planner.plan import Plan, PlanRequest, check_request, fit_input, plan_for_fit
from gateway.planner.prices import Price, catalog_price
from gateway.planner.quality import QualityTable, QuantQuality, load_quality
from gateway.planner.search_scale import ScaleChoice, scale_search
from gateway.planner.uncertainty import uncertainty
from gateway.planner.weights import Weights, weights

DEGREES = (1, 2, 4, 8, 16)  # GPUs per replica: TP 1-8 within a node, TP 8 x PP 2 beyond
REJECTIONS = {
    "quality": "below the quality floor",
    "no_fit": "does not fit",
    "slo": "SLO unreachable",
    "no_price": "no price",
}


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    gpus: tuple[str, ...] = ()  # empty: every GPU in the catalog that is not reference-only
    quants: tuple[str, ...] = ()
    engines: tuple[str, ...] = ()
    gpus_per_replica: int | None = None
    max_gpus_per_replica: int | None = None
    min_quality: str | None = None
    rank_by: str = "cost"  # cost | conservative: the cost if a card delivers the model's error less


RANKINGS = ("cost", "conservative")


@dataclass(frozen=True, kw_only=True)
class Option:
    plan: Plan
    price: Price
    quality: QuantQuality

    @property
    def monthly_usd(self) -> float:
        return self.plan.gpus * self.price.usd_per_hour * HOURS_PER_MONTH

    @property
    def conservative_monthly_usd(self) -> float:
        """The monthly cost of the fleet sized as if a card delivered the step model's measured
        error less (the plan's uncertainty line); the plain cost where none is measured."""
        u = uncertainty(self.plan)
        gpus = self.plan.gpus if u is None else u.conservative_gpus
        return gpus * self.price.usd_per_hour * HOURS_PER_MONTH

    @property
    def capacity_qps(self) -> float:
        assert self.plan.replica is not None
        return self.plan.replicas * self.plan.replica.capacity_qps

    @property
    def headroom(self) -> float:
        """Spare fleet capacity over the target: 0.25 means 25 % more than the target rate."""
        return self.capacity_qps / self.plan.request.workload.target_qps - 1

    @property
    def usd_per_million_output_tokens(self) -> float:
        wl = self.plan.request.workload
        tokens_per_hour = wl.target_qps * wl.output_tokens * 3600
        return self.plan.gpus * self.price.usd_per_hour / tokens_per_hour * 1e6

    @property
    def layout(self) -> str:
        """Replicas and what one replica is: `3 x TP2`, `2 x split 4`, `1 x 1 GPU -ngl 30`."""
        fit, n = self.plan.fit, self.plan.replicas
        if fit.kind == "partial_offload":
            return f"{n} x {fit.gpus} GPU -ngl {fit.gpu_layers}"
        if fit.kind == "moe_offload":
            return f"{n} x {fit.gpus} GPU --n-cpu-moe {fit.n_cpu_moe}"
        if fit.gpus == 1:
            return f"{n} x 1 GPU"
        if self.plan.request.engine.multi_gpu != "tensor_parallel":
            return f"{n} x split {fit.gpus}"
        return f"{n} x TP{fit.tp}" + (f"xPP{fit.pp}" if fit.pp > 1 else "")


@dataclass(frozen=True, kw_only=True)
class Rejection:
    gpu: str
    quant: str
    engine: str
    gpus_per_replica: int
    kind: str  # a key of REJECTIONS
    reason: str

    @property
    def line(self) -> str:
        return f"{REJECTIONS[self.kind]}: {self.reason}"


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    model: Model
    workload: Workload
    space: SearchSpace
    options: tuple[Option, ...]  # cheapest first
    rejected: tuple[Rejection, ...]
    # DeepSeek-style MoE models: EP/DP, PD and MTP layouts (search_scale.py), cheapest first
    at_scale: tuple[ScaleChoice, ...] = ()
    at_scale_rejected: tuple[str, ...] = ()

    @property
    def combinations(self) -> int:
        return len(self.options) + len(self.rejected)

    def cheapest_per_gpu(self) -> list[tuple[int, Option]]:
        """(1-based rank, option) of the cheapest option of each GPU type, cheapest first."""
        seen: dict[str, tuple[int, Option]] = {}
        for rank, o in enumerate(self.options, 1):
            seen.setdefault(o.plan.request.gpu.id, (rank, o))
        return list(seen.values())


@dataclass(frozen=True, kw_only=True)
class _MemoWeights(Weights):
    """Weights whose sums are computed once: the search reads them for every GPU and degree."""

    @functools.cached_property
    def total_bytes(self) -> int:  # type: ignore[override]
        return sum(p.bytes for p in self.items)

    @functools.cached_property
    def _groups(self) -> dict[str, int]:
        return super().bytes_by_group()

    @functools.cached_property
    def _params(self) -> dict[str, int]:
        return super().params_by_group()

    @functools.cached_property
    def _layers(self) -> dict[int | None, dict[str, int]]:
        out: dict[int | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for p in self.items:
            out[p.tensor.layer][p.tensor.group] += p.bytes
        return {k: dict(v) for k, v in out.items()}

    def bytes_by_group(self) -> dict[str, int]:
        return dict(self._groups)

    def params_by_group(self) -> dict[str, int]:
        return dict(self._params)

    def layer_bytes(self, layer: int, *, groups: tuple[str, ...] | None = None) -> int:
        row = self._layers.get(layer, {})
        return sum(row.values()) if groups is None else sum(row.get(g, 0) for g in groups)


def search(
    catalog: Catalog,
    *,
    model: Model,
    workload: Workload,
    space: SearchSpace | None = None,
    prices: Mapping[str, Price] | None = None,
    quality: QualityTable | None = None,
    **knobs: Any,
) -> SearchResult:
    """Plan every allowed combination; rank those meeting the SLOs by monthly cost."""
    space = space or SearchSpace()
    quality = quality or load_quality()
    if space.min_quality:
        quality.rank(space.min_quality)  # an unknown tier is an error, not an empty search
    prices = prices or {}
    memo: dict[str, Weights] = {}
    options: list[Option] = []
    rejected: list[Rejection] = []
    for gpu, quant, engine, n in combinations(catalog, space):
        price = prices.get(gpu.id) or catalog_price(gpu)
        req = PlanRequest(
            model=model,
            quant=quant,
            gpu=gpu,
            engine=engine,
            workload=workload,
            gpus_per_replica=n,
            gpu_price_usd_per_hour=price.usd_per_hour if price else None,
            **knobs,
        )
        if quant.id not in memo:
            check_request(req, catalog)  # the workload and knobs, once; raises naming the field
            memo[quant.id] = _MemoWeights(items=weights(model, quant, catalog).items)
        q = quality.of(quant.id)
        outcome = _evaluate(req, memo[quant.id], q, price, quality, space.min_quality)
        if isinstance(outcome, Option):
            options.append(outcome)
        else:
            kind, reason = outcome
            rejected.append(
                Rejection(
                    gpu=gpu.id,
                    quant=quant.id,
                    engine=engine.id,
                    gpus_per_replica=n,
                    kind=kind,
                    reason=reason,
                )
            )
    if space.rank_by not in RANKINGS:
        raise PlanError(f"`rank_by` must be one of {', '.join(RANKINGS)}", field="rank_by")

    def cost(o: Option) -> float:
        return o.conservative_monthly_usd if space.rank_by == "conservative" else o.monthly_usd

    options.sort(key=lambda o: (cost(o), o.plan.gpus, quality.rank(o.quality.tier)))
    scale, scale_why = scale_search(
        catalog,
        model=model,
        workload=workload,
        gpus=_space_gpus(catalog, space),
        quants=_pick(catalog, "quant", space.quants) or list(catalog.quants.values()),
        prices=prices,
        quality=quality,
        floor=space.min_quality,
    )
    return SearchResult(
        model=model,
        workload=workload,
        space=space,
        options=tuple(options),
        rejected=tuple(rejected),
        at_scale=tuple(scale),
        at_scale_rejected=tuple(scale_why),
    )


def _evaluate(
    req: PlanRequest,
    w: Weights,
    q: QuantQuality,
    price: Price | None,
    quality: QualityTable,
    floor: str | None,
) -> Option | tuple[str, str]:
    """The option a combination gives, or (kind, reason) for why it gives none."""
    if not quality.meets(q.quant, floor):
        return "quality", f"{q.label} is below {floor}"
    n, heads = req.gpus_per_replica or 1, req.model.num_heads
    tp = min(n, req.engine.gpus_per_node)
    if req.engine.multi_gpu == "tensor_parallel" and heads % tp:
        return "no_fit", f"tensor parallel {tp} does not divide {heads} attention heads"
    fit = fit_options(fit_input(req, w))[0]
    if not fit.ok:
        return "no_fit", fit.reason
    plan = plan_for_fit(req, w, fit)
    wl = req.workload
    if plan.replica is None or plan.replica.problem:
        return "slo", plan.replica.problem if plan.replica else "no capacity"
    if not plan.ttft_s <= wl.ttft_slo_s * (1 + 1e-9):
        return "slo", f"TTFT at the target is {plan.ttft_s:.2f} s, above {wl.ttft_slo_s:g} s"
    if not plan.tpot_s <= wl.tpot_slo_s * (1 + 1e-9):
        return "slo", f"TPOT at the target is {plan.tpot_s * 1e3:.1f} ms"
    if price is None:
        return "no_price", f"no sourced price for {req.gpu.name}; give one in a --prices file"
    return Option(plan=plan, price=price, quality=q)


def combinations(catalog: Catalog, space: SearchSpace) -> Iterator[tuple[Gpu, Quant, Engine, int]]:
    """Every (GPU, quantization, engine, GPUs per replica) the space allows, engines serving
    only the formats they read."""
    gpus = _space_gpus(catalog, space)
    quants = _pick(catalog, "quant", space.quants) or list(catalog.quants.values())
    engines = _pick(catalog, "engine", space.engines) or list(catalog.engines.values())
    for engine in engines:
        for quant in quants:
            if quant.format not in engine.formats:
                continue
            for gpu in gpus:
                for n in _degrees(engine, space):
                    yield gpu, quant, engine, n


def _space_gpus(catalog: Catalog, space: SearchSpace) -> list[Gpu]:
    return _pick(catalog, "gpu", space.gpus) or [
        g for g in catalog.gpus.values() if not g.reference_only
    ]


def _pick(catalog: Catalog, kind: str, names: tuple[str, ...]) -> list[Any]:
    try:
        return list({id(e): e for e in (getattr(catalog, kind)(n) for n in names)}.values())
    except PlanError as e:
        raise PlanError(str(e), field=f"{kind}s") from None


def _degrees(engine: Engine, space: SearchSpace) -> tuple[int, ...]:
    if space.gpus_per_replica:
        return (space.gpus_per_replica,)
    cap = min(engine.max_gpus_per_replica, space.max_gpus_per_replica or math.inf)
    return tuple(n for n in DEGREES if n <= cap)
