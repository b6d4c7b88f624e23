"""`cardinal sim`: simulated cards on consecutive ports, from a plan or from the catalog."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import planfile
from gateway.errors import cannot_listen
from gateway.planner.catalog import Catalog
from gateway.planner.errors import PlanError

if TYPE_CHECKING:
    from gateway.sim.card import Card
    from gateway.sim.faults import Faults
from gateway.cli.args import (
    positive,
    read_text,
)


def add_sim_parser(sub: Any) -> None:
    sim = sub.add_parser(
        "sim",
        help="serve simulated cards that speak vLLM's OpenAI API",
        description="Serve simulated cards (a continuous-batching engine timed by the planner's "
        "speed model) on consecutive ports: from a plan file, or from --model/--quant/--gpu.",
    )
    sim.add_argument("--plan", type=Path, help="fleet.yaml: the replica it plans, --cards replicas")
    sim.add_argument("--model")
    sim.add_argument("--quant")
    sim.add_argument("--gpu")
    sim.add_argument("--engine")
    sim.add_argument(
        "--cards",
        type=positive(int),
        help="cards on consecutive ports (default: the plan's replicas, or 1)",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=positive(int), default=8001, help="port of the first card")
    sim.add_argument(
        "--tokens-per-event",
        type=positive(int),
        default=1,
        help="tokens per SSE event after the first, like vLLM's stream interval (timing is exact)",
    )
    sim.add_argument("--max-num-seqs", type=positive(int), help="override the batch limit")
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="[CARD:]NAME=VALUE",
        help="inject a fault on one card (or all): loading_s=30s, error_rate=5%%, spike_rate=0.1, "
        "spike_s=2s, hang, crash_after=20, crash_rate=0.5; also at run time via /admin/faults",
    )
    sim.add_argument("--seed", type=int, default=0, help="card i draws its faults from seed + i")
    sim.add_argument(
        "--role",
        choices=("replica", "ep", "prefill", "decode"),
        default="replica",
        help="with --plan: replica (the tensor-parallel plan's), or one group of its at-scale "
        "layout: ep (aggregated), prefill or decode (SGLang's disaggregated protocol; a prefill "
        "card serves its bootstrap rooms on its own port)",
    )


def _sim_card(args: argparse.Namespace, catalog: Catalog) -> tuple[str, Card, int]:
    """(served model name, card, replicas) from --plan or from --model/--quant/--gpu."""
    from gateway.sim.card import card_from_catalog, card_from_plan

    named = [f for f in ("model", "quant", "gpu", "engine") if getattr(args, f)]
    if args.plan:
        if named:
            raise PlanError("give either --plan or --model/--quant/--gpu, not both", field=named[0])
        plan = planfile.read(read_text(args.plan))
        card = card_from_plan(catalog, plan)
        if args.max_num_seqs:
            card = replace(card, engine=replace(card.engine, max_num_seqs=args.max_num_seqs))
        return catalog.model(plan.model).id, card, plan.replicas
    for f in ("model", "quant", "gpu"):
        if not getattr(args, f):
            raise PlanError(f"--{f} is required without --plan", field=f)
    card = card_from_catalog(
        catalog,
        model=args.model,
        quant=args.quant,
        gpu=args.gpu,
        engine=args.engine or "vllm",
        max_num_seqs=args.max_num_seqs,
    )
    return catalog.model(args.model).id, card, 1


def _role_card(args: argparse.Namespace, catalog: Catalog) -> tuple[str, Any, int, dict]:
    """(served name, card, groups, CardConfig fields) for one group of the plan's at-scale
    layout."""
    from gateway.sim.scale_card import role_card

    if not args.plan:
        raise PlanError("--role needs --plan (a plan with an at-scale layout)", field="role")
    if args.max_num_seqs:
        raise PlanError("--max-num-seqs sets a replica's batch", field="max_num_seqs")
    plan = planfile.read(read_text(args.plan))
    card = role_card(catalog, plan, args.role)
    extra = {"role": {"ep": "both"}.get(args.role, args.role)}
    if args.role == "decode":
        extra["kv_transfer_s_per_token"] = card.kv_transfer_s_per_token
    return catalog.model(plan.model).id, card, card.groups, extra


def _sim_faults(specs: list[str], *, cards: int) -> list[Faults]:
    from gateway.sim.faults import FaultError, Faults, parse_fault_flag

    faults = [Faults() for _ in range(cards)]
    try:
        for spec in specs:
            indexes, changes = parse_fault_flag(spec, cards=cards)
            for i in indexes:
                faults[i] = faults[i].update(changes)
    except FaultError as e:
        raise PlanError(f"{spec}: {e}", field="fault") from None
    return faults


def cmd_sim(args: argparse.Namespace, catalog: Catalog) -> int:
    import asyncio

    from gateway.sim.fleet import serve_cards
    from gateway.sim.server import CardConfig

    extra: dict = {}
    if args.role != "replica":
        name, card, replicas, extra = _role_card(args, catalog)
    else:
        name, card, replicas = _sim_card(args, catalog)
    cards = args.cards or replicas
    faults = _sim_faults(args.fault, cards=cards)
    configs = [
        CardConfig(
            model_name=name,
            speed=card.speed,
            engine=card.engine,
            tokens_per_event=args.tokens_per_event,
            faults=faults[i],
            seed=args.seed + i,
            **extra,
        )
        for i in range(cards)
    ]
    try:
        asyncio.run(serve_cards(configs, host=args.host, port=args.port))
    except OSError as e:  # a port taken: one line, like every other error
        raise cannot_listen("--port", e) from None
    return 0
