"""`cardinal whatif`: a plan's fleet in virtual time, in one process or in shards.

One shard is one gateway over its cards: exact. Several shards (`--shards S`, over as many
processes as there are cores, `multiprocessing`) are S gateways, each over 1/S of the cards with
1/S of the traffic (every S-th trace row, or the rate / S with its own seed): a fleet fronted by
S gateway replicas that each own a cell of it. Scripted events and the autoscaling rule apply to
each shard in proportion.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway import planfile
from gateway.planner.catalog import load_catalog
from gateway.sim.card import card_from_plan
from gateway.whatif.events import Autoscale, Event
from gateway.whatif.fleet import Fleet, gateway_config
from gateway.whatif.stats import Window
from gateway.whatif.workload import Workload


@dataclass(frozen=True, kw_only=True)
class WhatifOptions:
    plan: Mapping[str, Any]  # the plan file's data
    cards: int
    duration_s: float
    workload: Workload
    policy: str | None = None  # instead of the rendered gateway's
    events: tuple[Event, ...] = ()
    autoscale: Autoscale | None = None
    shards: int = 1
    seed: int = 0
    records: bool = False  # keep every request's record (small runs: the agreement test)
    runs: bool = True  # False: every engine step on its own (what the runs save: make bench)


@dataclass
class Result:
    options: WhatifOptions
    minutes: dict[int, Window]
    total: Window
    gpu_hours: float
    cost_usd: float | None
    steps: int
    wall_s: float  # the slowest shard's CPU-bound run, as the user waits for it
    cpu_s: float  # all shards together
    records: list[dict[str, Any]] | None
    policy: str
    cards_at_end: int

    @property
    def sim_per_wall(self) -> float:
        return self.options.duration_s / self.wall_s if self.wall_s > 0 else math.inf


def _shard(options: WhatifOptions, index: int) -> dict[str, Any]:
    o = options
    plan = planfile.of(o.plan)
    card = card_from_plan(load_catalog(), plan)
    share = _share(o.cards, o.shards, index)
    config = gateway_config(plan, share, policy=o.policy)
    workload = replace(o.workload, index=index, total=o.shards)
    events = tuple(
        replace(e, cards=_share(e.cards, o.shards, index))
        for e in o.events
        if _share(e.cards, o.shards, index) > 0
    )
    autoscale = o.autoscale
    if autoscale is not None and o.shards > 1:
        autoscale = replace(
            autoscale,
            min_cards=max(1, _share(autoscale.min_cards, o.shards, index)),
            max_cards=max(1, _share(autoscale.max_cards, o.shards, index)),
        )
    w = plan.workload
    fleet = Fleet(
        card=card,
        config=config,
        arrivals=iter(workload),
        duration_s=o.duration_s,
        ttft_slo_s=w.ttft_slo_s,
        tpot_slo_s=w.tpot_slo_s,
        gpus_per_card=plan.replica.gpus or 1,
        events=events,
        autoscale=autoscale,
        seed=o.seed + index,
        records=o.records,
        runs=o.runs,
    )
    t0 = time.process_time()
    stats = fleet.run()
    cpu = time.process_time() - t0
    present = sum(1 for c in fleet.cards if c.alive and c.removed_s is None)
    return {
        "minutes": stats.minutes,
        "records": stats.records,
        "gpu_hours": fleet.gpu_hours(),
        "steps": fleet.steps(),
        "cpu_s": cpu,
        "policy": config.routing.policy,
        "cards_at_end": present,
    }


def _share(n: int, shards: int, index: int) -> int:
    """Shard `index`'s part of `n` (the first shards take the remainder)."""
    return n // shards + (1 if index < n % shards else 0)


def run(options: WhatifOptions) -> Result:
    o = options
    t0 = time.monotonic()
    if o.shards == 1:
        parts = [_shard(o, 0)]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(o.shards, os.cpu_count() or 1)) as pool:
            parts = pool.starmap(_shard, [(o, i) for i in range(o.shards)])
    wall = time.monotonic() - t0
    minutes: dict[int, Window] = {}
    for part in parts:
        for m, w in part["minutes"].items():
            minutes.setdefault(m, Window()).merge(w)
    total = Window()
    for w in minutes.values():
        total.merge(w)
    gpu_hours = sum(p["gpu_hours"] for p in parts)
    price = o.plan.get("inputs", {}).get("gpu_price_usd_per_hour")
    records = None
    if o.records:
        records = sorted((r for p in parts for r in p["records"] or ()), key=lambda r: r["t"])
    cpu = sum(p["cpu_s"] for p in parts)
    return Result(
        options=o,
        minutes=dict(sorted(minutes.items())),
        total=total,
        gpu_hours=gpu_hours,
        cost_usd=gpu_hours * price if price is not None else None,
        steps=sum(p["steps"] for p in parts),
        wall_s=max(p["cpu_s"] for p in parts) if o.shards == 1 else wall,
        cpu_s=cpu,
        records=records,
        policy=parts[0]["policy"],
        cards_at_end=sum(p["cards_at_end"] for p in parts),
    )
