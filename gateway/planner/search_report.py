"""A search result as data (`--json`) and as the ranked table `cardinal plan --search` prints."""

from __future__ import annotations

from typing import Any

from gateway.planner.report import plan_dict
from gateway.planner.search import REJECTIONS, Option, SearchResult
from gateway.planner.search_scale import ScaleChoice

SEARCH_VERSION = 1


def option_plan(o: Option) -> dict[str, Any]:
    """The plan file for one option, its price and the price's source included."""
    d = plan_dict(o.plan)
    d["cost"]["price_source"] = o.price.source or None
    d["cost"]["price_basis"] = o.price.basis
    d["quality"] = _quality(o)
    return d


def _quality(o: Option) -> dict[str, Any]:
    q = o.quality
    return {
        "tier": q.tier,
        "measured": q.measured,
        "kld": q.kld,
        "ppl_delta": q.ppl_delta,
        "imatrix": q.imatrix,
        "note": q.note or None,
    }


def _option(rank: int, o: Option) -> dict[str, Any]:
    p, req = o.plan, o.plan.request
    return {
        "rank": rank,
        "gpu": req.gpu.id,
        "quant": req.quant.id,
        "engine": req.engine.id,
        "gpus_per_replica": p.fit.gpus,
        "replicas": p.replicas,
        "gpus": p.gpus,
        "fit": p.fit.kind,
        "layout": o.layout,
        "monthly_usd": round(o.monthly_usd, 2),
        "conservative_monthly_usd": round(o.conservative_monthly_usd, 2),
        "usd_per_million_output_tokens": round(o.usd_per_million_output_tokens, 4),
        "capacity_qps": round(o.capacity_qps, 3),
        "headroom": round(o.headroom, 4),
        "ttft_s": round(p.ttft_s, 3),
        "tpot_s": round(p.tpot_s, 4),
        "quality": _quality(o),
        "price": {
            "usd_per_hour": round(o.price.usd_per_hour, 4),
            "basis": o.price.basis,
            "source": o.price.source or None,
        },
    }


def search_dict(r: SearchResult) -> dict[str, Any]:
    wl, s = r.workload, r.space
    return {
        "version": SEARCH_VERSION,
        "inputs": {
            "model": r.model.id,
            "workload": {
                "prompt_tokens": wl.prompt_tokens,
                "output_tokens": wl.output_tokens,
                "target_qps": wl.target_qps,
                "ttft_slo_s": wl.ttft_slo_s,
                "tpot_slo_s": wl.tpot_slo_s,
                "headroom": wl.headroom,
            },
            "space": {
                "gpus": list(s.gpus) or None,
                "quants": list(s.quants) or None,
                "engines": list(s.engines) or None,
                "gpus_per_replica": s.gpus_per_replica,
                "max_gpus_per_replica": s.max_gpus_per_replica,
                "min_quality": s.min_quality,
                "rank_by": s.rank_by,
            },
        },
        "combinations": r.combinations,
        "options": [_option(i, o) for i, o in enumerate(r.options, 1)],
        "cheapest_per_gpu": [
            {"gpu": o.plan.request.gpu.id, "rank": rank} for rank, o in r.cheapest_per_gpu()
        ],
        "at_scale": [_scale(i, c, r.workload) for i, c in enumerate(r.at_scale, 1)],
        "at_scale_rejected": list(r.at_scale_rejected),
        "rejected": [
            {
                "gpu": x.gpu,
                "quant": x.quant,
                "engine": x.engine,
                "gpus_per_replica": x.gpus_per_replica,
                "kind": x.kind,
                "reason": x.line,
            }
            for x in r.rejected
        ],
    }


def _scale(rank: int, c: ScaleChoice, wl: Any) -> dict[str, Any]:
    o = c.option
    return {
        "rank": rank,
        **o.as_dict(),
        "monthly_usd": round(c.monthly_usd, 2),
        "usd_per_million_output_tokens": round(c.usd_per_million_output_tokens(wl), 4),
        "quality": {"tier": c.quality.tier, "measured": c.quality.measured},
        "price": {"usd_per_hour": round(c.price.usd_per_hour, 4), "source": c.price.source},
    }


SCALE_HEADER = (
    f"{'#':>3}  {'GPUs':>5} {'gpu':<14} {'layout':<50} {'quant':<6} {'$/month':>10} "
    f"{'$/M out':>8} {'TTFT':>7} {'TPOT':>8}"
)


def _scale_row(o: dict[str, Any]) -> str:
    return (
        f"{o['rank']:>3}  {o['gpus']:>5} {o['gpu']:<14} {o['layout']:<50} {o['quant']:<6} "
        f"{o['monthly_usd']:>10,.0f} {o['usd_per_million_output_tokens']:>8.3f} "
        f"{o['ttft_s']:>6.2f}s {o['tpot_s'] * 1e3:>6.1f}ms"
    )


def _scale_lines(d: dict[str, Any], limit: int | None) -> list[str]:
    """The at-scale ranking: EP/DP, PD and MTP layouts (SGLang), and the cheapest overall."""
    ranked, why = d.get("at_scale") or [], d.get("at_scale_rejected") or []
    if not ranked and not why:
        return []
    lines = ["", "At scale (SGLang: expert parallel with DP attention, prefill/decode split, MTP)"]
    if ranked:
        shown = ranked if limit is None else ranked[:limit]
        lines += [SCALE_HEADER] + [_scale_row(o) for o in shown]
        if len(shown) < len(ranked):
            lines.append(f"  ... {len(ranked) - len(shown)} more (--json lists all)")
        tp = d["options"][0] if d["options"] else None
        best = ranked[0]
        if tp is None or best["monthly_usd"] < tp["monthly_usd"]:
            vs = (
                ""
                if tp is None
                else f" (tensor parallel: {tp['gpus']} GPUs, ${tp['monthly_usd']:,.0f})"
            )
            lines.append(
                f"  cheapest overall: {best['gpus']} x {best['gpu']} {best['layout']}, "
                f"${best['monthly_usd']:,.0f}/month{vs}"
            )
    else:
        lines.append("  no EP or PD layout meets the SLOs")
    lines += [f"  rejected: {w}" for w in why]
    return lines


HEADER = (
    f"{'#':>3}  {'fleet':<22} {'layout':<24} {'quant':<8} {'engine':<9} {'$/month':>10} "
    f"{'$/M out':>8} {'headroom':>8} {'TTFT':>7} {'TPOT':>8}  quality"
)


def _row(o: dict[str, Any]) -> str:
    q = o["quality"]
    tier = q["tier"] + (f" (KLD {q['kld']:.3g})" if q["kld"] else "")
    tier += "" if q["measured"] else " (not measured)"
    return (
        f"{o['rank']:>3}  {str(o['gpus']) + ' x ' + o['gpu']:<22} {o['layout']:<24} "
        f"{o['quant']:<8} {o['engine']:<9} {o['monthly_usd']:>10,.0f} "
        f"{o['usd_per_million_output_tokens']:>8.3f} {o['headroom']:>+8.0%} "
        f"{o['ttft_s']:>6.2f}s {o['tpot_s'] * 1e3:>6.1f}ms  {tier}"
    )


def render_search_text(d: dict[str, Any], *, limit: int | None = 20) -> str:
    """The ranked table, the cheapest option per GPU type and every rejection with its reason."""
    i, w = d["inputs"], d["inputs"]["workload"]
    opts = d["options"]
    lines = [
        f"Cardinal search: {i['model']} at {w['target_qps']:g} QPS, {w['prompt_tokens']} prompt + "
        f"{w['output_tokens']} output tokens, TTFT <= {w['ttft_slo_s']:g} s, "
        f"TPOT <= {w['tpot_slo_s'] * 1e3:g} ms, headroom {w['headroom']:.0%}",
        f"  {d['combinations']} combinations: {len(opts)} meet the SLOs, "
        f"{len(d['rejected'])} rejected"
        + (f"; quality floor {i['space']['min_quality']}" if i["space"]["min_quality"] else ""),
        "",
    ]
    if opts:
        shown = opts if limit is None else opts[:limit]
        ranked = (
            "Ranked by monthly cost with cards as slow as the model's measured error"
            if i["space"].get("rank_by") == "conservative"
            else "Ranked by monthly cost"
        )
        lines += [ranked, HEADER] + [_row(o) for o in shown]
        if len(shown) < len(opts):
            lines.append(f"  ... {len(opts) - len(shown)} more (--json lists all)")
        lines += ["", "Cheapest per GPU type", HEADER]
        lines += [_row(opts[c["rank"] - 1]) for c in d["cheapest_per_gpu"]]
    else:
        lines.append("No combination meets the SLOs.")
    lines += _scale_lines(d, limit)
    if d["rejected"]:
        lines += ["", "Rejected"]
        lines += [
            f"  {x['gpu']} {x['quant']} {x['engine']} x{x['gpus_per_replica']}: {x['reason']}"
            for x in d["rejected"]
        ]
    return "\n".join(lines) + "\n"


def rejection_counts(d: dict[str, Any]) -> dict[str, int]:
    """How many combinations each kind of reason rejected."""
    out = dict.fromkeys(REJECTIONS, 0)
    for x in d["rejected"]:
        out[x["kind"]] += 1
    return out
