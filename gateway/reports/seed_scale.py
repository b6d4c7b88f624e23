"""docs/seeds.md: seed 002's question (75 QPS of DeepSeek-V3, 512 in / 256 out) answered the way
DeepSeek is served at scale: the cheapest EP/DP, PD and MTP layout per GPU type."""

from __future__ import annotations

from gateway.planner.capacity import HOURS_PER_MONTH, Workload
from gateway.planner.catalog import Catalog
from gateway.planner.hosted import api_price
from gateway.planner.scale import group
from gateway.planner.scale_fleet import options
from gateway.planner.scale_report import held_out_error

WORKLOAD = Workload(
    prompt_tokens=512, output_tokens=256, target_qps=75, ttft_slo_s=2.0, tpot_slo_s=0.05
)
GPUS = ("h100-sxm", "h200", "h800", "h20", "b200", "a100-80gb-sxm", "mi300x", "mi325x")


def seed_75qps_at_scale(c: Catalog) -> list[str]:
    model = c.model("deepseek-v3")
    wl = WORKLOAD
    tokens_per_hour = wl.target_qps * wl.output_tokens * 3600
    api = api_price(model.hosted_api)
    api_month = (
        api.monthly_usd(
            qps=wl.target_qps,
            prompt_tokens=wl.prompt_tokens,
            output_tokens=wl.output_tokens,
            hours=HOURS_PER_MONTH,
        )
        if api
        else None
    )
    median, n, worst, worst_id = held_out_error()
    lines = [
        "## Seed 002 at scale: DeepSeek-V3 the way it is served",
        "",
        "The same 75 QPS (512 prompt + 256 output tokens, TTFT <= 2 s, TPOT <= 50 ms, 20 % "
        "headroom) planned with expert parallelism and DP attention, prefill and decode apart, "
        "and MTP (`cardinal plan --layout auto`; planner/scale.py), the cheapest layout per GPU "
        "type at catalog prices. FP8 weights (INT8 W8A8 on A100, which has no FP8). The scale "
        f"model's median error on {n} per-node figures it was not fitted to (published and "
        "measured runs) is "
        f"{median:.0%} (worst {worst:.0%}, {worst_id}: docs/accuracy.md).",
        "",
        "| GPU | layout | GPUs | $/month | $ per M output tokens | TTFT | TPOT | per node |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for gpu in GPUS:
        quant = "int8" if c.gpu(gpu).fp8_tflops is None else "fp8"
        ok, why = options(c, model, quant, gpu, wl)
        if not ok:
            lines.append(f"| {gpu} | none: {why[0] if why else 'no layout'} | | | | | | |")
            continue
        o = ok[0]
        price = c.gpu(gpu).price_usd_per_hour
        month = "no price" if price is None else f"${o.gpus * price * HOURS_PER_MONTH:,.0f}"
        per_m = "" if price is None else f"${o.gpus * price / tokens_per_hour * 1e6:.3f}"
        lines.append(
            f"| {gpu} | {o.layout} | {o.gpus} | {month} | {per_m} | {o.ttft_s:.2f} s | "
            f"{o.tpot_s * 1e3:.1f} ms | {o.output_tokens_per_s_per_node:,.0f} output tok/s |"
        )
    a100 = group(c, model=model, quant="int8", gpu="a100-80gb-sxm", gpus=6)
    smallest = next(
        n * 8
        for n in range(1, 64)
        if not group(c, model=model, quant="int8", gpu="a100-80gb-sxm", gpus=n * 8).problem()
    )
    weights_gb = (a100.dense_bytes + a100.expert_bytes) / 1e9
    lines += [
        "",
        f"- Hosted API ({model.hosted_api}): "
        + (f"${api_month:,.0f}/month for the same traffic." if api_month else "no price.")
        + " Tensor parallelism alone (the tables above) needs tens to hundreds of GPUs, because "
        "every TP rank holds the whole latent cache and every GPU reads every expert.",
        f"- Why the seed's 6 x A100 INT8 cannot be right: V3's weights are {weights_gb:,.0f} GB "
        f"in INT8, and 6 A100-80GB hold {6 * 80} GB before any cache. Spread over a group "
        f"(EP with DP attention), each A100 holds {a100.dense_bytes / 1e9:.0f} GB of dense "
        f"weights of its own plus its share of the experts, so a group needs at least "
        f"{smallest} of them (whole nodes) to leave room for the cache.",
        "",
    ]
    return lines
