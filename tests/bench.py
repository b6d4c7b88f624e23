"""`make bench`: every figure measured in one run on this machine (planner, simulator, ...)."""

from __future__ import annotations

import time

from gateway.planner.accuracy import check_all
from gateway.planner.capacity import Workload
from gateway.planner.catalog import Catalog, load_catalog
from gateway.planner.plan import make_plan, request_for
from gateway.planner.search import search


def _plans(catalog: Catalog, gpus: list[str]) -> int:
    wl = Workload(
        prompt_tokens=512, output_tokens=256, target_qps=10, ttft_slo_s=2, tpot_slo_s=0.05
    )
    n = 0
    for model in catalog.models.values():
        for quant in ("awq", "fp8", "q4_k_m"):
            for gpu in gpus:
                make_plan(
                    request_for(catalog, model=model, quant=quant, gpu=gpu, workload=wl), catalog
                )
                n += 1
    return n


def planner() -> None:
    catalog = load_catalog()
    gpus = ["rtx-4090", "l40s", "a100-80gb-sxm", "h100-sxm", "h200"]
    t0 = time.perf_counter()
    n = _plans(catalog, gpus)
    t_plans = time.perf_counter() - t0
    t0 = time.perf_counter()
    checks = check_all(catalog)
    t_acc = time.perf_counter() - t0
    print(f"plans: {n} in {t_plans:.2f} s = {t_plans / n * 1e3:.1f} ms per plan")
    print(f"accuracy check: {len(checks)} reference rows in {t_acc:.2f} s")
    _search(catalog)


def _search(catalog: Catalog) -> None:
    """`plan --search` over the whole catalog, for every model: the slowest must stay < 2 s."""
    wl = Workload(
        prompt_tokens=512, output_tokens=256, target_qps=75, ttft_slo_s=2, tpot_slo_s=0.05
    )
    times, at_scale = {}, {}
    for model in catalog.models.values():
        t0 = time.perf_counter()
        result = search(catalog, model=model, workload=wl)
        times[model.id] = time.perf_counter() - t0
        at_scale[model.id] = len(result.at_scale)
    slowest = max(times, key=lambda k: times[k])
    print(
        f"search: {result.combinations} combinations per model, whole catalog; slowest "
        f"{slowest} {times[slowest]:.2f} s, median {sorted(times.values())[len(times) // 2]:.2f} s"
    )
    print(
        f"search: deepseek-v3 at 75 QPS (TP, EP/DP, PD and MTP layouts ranked, "
        f"{at_scale['deepseek-v3']} at scale) {times['deepseek-v3']:.2f} s (target < 2 s)"
    )


def main() -> None:
    from tests import bench_gateway, bench_scaling, bench_sim, bench_whatif

    planner()
    bench_sim.main()
    bench_whatif.main()
    bench_gateway.main([])
    bench_scaling.main([])


if __name__ == "__main__":
    main()
