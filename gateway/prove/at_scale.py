"""`cardinal prove --at-scale`: the plan's at-scale layout instead of its tensor-parallel replicas.
A PD layout starts its prefill and decode groups as simulated cards in those roles (SGLang's
protocol), the gateway pairing every request across them; `--check-minimal` drops one decode
worker. An aggregated EP layout starts its groups as cards that prefill and decode."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from gateway import planfile
from gateway.planfile import PlanFileError
from gateway.planner.catalog import load_catalog
from gateway.prove.binding import binding_constraint
from gateway.prove.fleet import (
    gateway,
    gateway_config,
    sim_cards,
)
from gateway.prove.report import write_report
from gateway.prove.trial import Trial, run_trial, wait_idle
from gateway.render.gateway_config import pd_backends, queue_one_batch_per_answering
from gateway.sim.scale_card import role_card


def pd_config(
    plan_path: Path, *, prefill: Sequence[str], decode: Sequence[str], slots: dict[str, int]
) -> dict[str, Any]:
    """The gateway config over prefill and decode workers (each prefill card serves its
    bootstrap rooms on its own port); `slots` holds each role's in-flight limit."""
    urls = [*prefill, *decode]
    roles = ["prefill"] * len(prefill) + ["decode"] * len(decode)
    data = gateway_config(plan_path, urls, [slots[r] for r in roles])
    pd_backends(data, roles, bootstrap_ports=[int(u.rsplit(":", 1)[1]) for u in prefill])
    queue_one_batch_per_answering(data)
    return data


def prove_at_scale(o: Any, *, say: Callable[[str], None], outcome: Callable[..., int]) -> int:
    """The at-scale proof of `o` (ProveOptions); `--cards` counts decode workers (PD) or groups
    (EP)."""
    plan = planfile.read(o.plan_path.read_text(encoding="utf-8"))
    scale = plan.data.get("at_scale") or {}
    if not scale.get("layouts"):
        raise PlanFileError("the plan has no at-scale layout to prove", field="at_scale")
    lay = scale["layouts"][0]
    pd = lay["kind"] == "pd"
    catalog = load_catalog()
    roles = ("prefill", "decode") if pd else ("ep",)
    cards = {r: role_card(catalog, plan, r) for r in roles}
    counts = {r: c.groups for r, c in cards.items()}
    counts[roles[-1]] = o.cards or counts[roles[-1]]
    target = o.target_qps or plan.workload.target_qps
    o.report.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        started = {
            r: stack.enter_context(
                sim_cards(o.plan_path, cards=counts[r], tokens_per_event=o.tokens_per_event,
                          logs=o.report, role=r)
            )
            for r in roles
        }  # fmt: skip
        slots = {r: c.engine.max_num_seqs for r, c in cards.items()}
        answering = started[roles[-1]].urls

        def fleet_gateway(decode: list[str], log: Path) -> str:
            if pd:
                prefill = started["prefill"].urls
                config = pd_config(o.plan_path, prefill=prefill, decode=decode, slots=slots)
                return stack.enter_context(
                    gateway(o.plan_path, backends=[*prefill, *decode], log=log, config=config)
                )
            return stack.enter_context(
                gateway(o.plan_path, backends=decode, log=log, slots=[slots["ep"]] * len(decode))
            )

        say(f"proving {target:g} QPS on {lay['layout']} ({lay['gpu']}) as simulated groups")

        def run(name: str, decode: list[str], log: str) -> Trial:
            gw = fleet_gateway(decode, o.report / log)
            wait_idle(gw, decode)
            prefill = started["prefill"].urls if pd else []
            trial = run_trial(name=name, plan_path=o.plan_path, gateway=gw, cards=decode,
                              target_qps=target, duration_s=o.duration_s, out_dir=o.report,
                              progress=say, lag_also=prefill)  # fmt: skip
            what = "decode worker(s)" if pd else "EP group(s)"
            say(f"{name} at {target:.2f} QPS on {len(decode)} {what}: {trial.verdict['label']}")
            return trial

        main = run("proof", answering, "gateway.log")
        say(main.table)
        binding = binding_constraint(main, max_num_seqs=slots[roles[-1]])
        say(f"binding constraint: {binding}")
        minimal = None
        if o.check_minimal and len(answering) > 1:
            minimal = run("minus-one", answering[:-1], "gateway-1.log")
            say(minimal.table)
        elif o.check_minimal:
            say("--check-minimal: the layout has one decode worker; none can be dropped")
    code = outcome(main, minimal, say)
    page = write_report(o.report, plan=plan, main=main, binding=binding, sweep=[], minimal=minimal)
    say(f"report: {page}")
    return code
