"""The pure parts of the gateway: routing policies, admission, engine metrics, the SSE meter."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from gateway.server.admission import Admission
from gateway.server.backend import Backend, EngineLoad
from gateway.server.config import AdmissionConfig, BackendConfig, RoutingConfig
from gateway.server.errors import ModelNotFound, NoBackend, Overloaded
from gateway.server.metrics import GatewayMetrics
from gateway.server.policy import (
    Affinity,
    EngineAware,
    LeastOutstanding,
    RoundRobin,
    RouteRequest,
    make_policy,
)
from gateway.server.scrape import engine_load, read_series
from gateway.server.sse import StreamMeter, body_usage, usage

REQ = RouteRequest(model="m")


def backends(*weights: float, max_inflight: int = 8) -> list[Backend]:
    return [
        Backend(
            BackendConfig(name=f"b{i}", url=f"http://h:{i}", models=("m",), weight=w,
                          max_inflight=max_inflight),
            index=i,
        )
        for i, w in enumerate(weights)
    ]  # fmt: skip


def test_round_robin_takes_turns_and_skips_the_missing() -> None:
    bs = backends(1, 1, 1)
    rr = RoundRobin(3)
    assert [rr.choose(bs, REQ).name for _ in range(4)] == ["b0", "b1", "b2", "b0"]
    assert [rr.choose([bs[0], bs[2]], REQ).name for _ in range(3)] == ["b2", "b0", "b2"]


def test_least_outstanding_prefers_the_emptier_backend() -> None:
    bs = backends(1, 1, 1)
    bs[0].inflight, bs[1].inflight, bs[2].inflight = 5, 0, 5
    p = LeastOutstanding(random.Random(1))
    picks = Counter(p.choose(bs, REQ).name for _ in range(300))
    # b1 wins whenever it is one of the two sampled: 2/3 of the time.
    assert 170 < picks["b1"] < 230


def test_least_outstanding_weights_by_capacity_even_at_zero_load() -> None:
    bs = backends(2, 1)
    p = LeastOutstanding(random.Random(2))
    idle = Counter(p.choose(bs, REQ).name for _ in range(3000))
    assert idle["b0"] / idle["b1"] == pytest.approx(2.0, rel=0.1)
    bs[0].inflight = 3  # 3/2 > 1/1: the small card is less loaded for its size
    bs[1].inflight = 1
    assert {p.choose(bs, REQ).name for _ in range(20)} == {"b1"}
    picks = Counter()
    for _ in range(3000):  # each pick stays in flight, then everything drains
        b = p.choose(bs, REQ)
        b.inflight += 1
        picks[b.name] += 1
        if sum(x.inflight for x in bs) >= 12:
            for x in bs:
                x.inflight = 0
    assert picks["b0"] / picks["b1"] == pytest.approx(2.0, rel=0.1)


def test_engine_aware_avoids_a_queue_and_a_full_cache() -> None:
    bs = backends(1, 1, 1)
    bs[0].load = EngineLoad(running=8, waiting=3, kv_usage=0.5)
    bs[1].load = EngineLoad(running=8, waiting=0, kv_usage=0.95)
    bs[2].load = EngineLoad(running=8, waiting=0, kv_usage=0.30)
    p = EngineAware(random.Random(3))
    assert {p.choose(bs, REQ).name for _ in range(20)} == {"b2"}
    bs[2].inflight = 8  # the gateway's own count still counts between scrapes
    assert {p.choose(bs, REQ).name for _ in range(20)} == {"b1"}


def test_engine_aware_counts_what_it_sent_to_a_queue_since_the_scrape() -> None:
    """b1's queue was the longer at the scrape, but b0 has been sent two more since into its
    own queue (a scrape is up to an interval old): b0 now has three waiting, b1 two."""
    bs = backends(1, 1)
    bs[0].load = EngineLoad(running=4, waiting=1, kv_usage=0.2)
    bs[1].load = EngineLoad(running=4, waiting=2, kv_usage=0.2)
    bs[0].inflight_at_scrape, bs[0].inflight = 5, 7
    bs[1].inflight_at_scrape, bs[1].inflight = 5, 5
    p = EngineAware(random.Random(5))
    assert {p.choose(bs, REQ).name for _ in range(20)} == {"b1"}
    # with no queue at the scrape, what was sent since is only in flight
    bs[1].load = EngineLoad(running=4, waiting=0, kv_usage=0.2)
    bs[1].inflight = 9
    assert {p.choose(bs, REQ).name for _ in range(20)} == {"b1"}


def test_engine_aware_counts_in_flight_against_the_slots_a_queue_showed() -> None:
    """b1 showed a queue beside 4 running: its batch holds 4. At 3 in flight, one more fills it,
    so b0 (32 slots, 8 in flight, a fuller cache) is the lighter; before b1's slots are known,
    b1's emptier cache would have won."""
    bs = backends(1, 1, max_inflight=32)
    bs[0].load = EngineLoad(running=8, waiting=0, kv_usage=0.30)
    bs[1].load = EngineLoad(running=3, waiting=0, kv_usage=0.05)
    bs[0].inflight, bs[1].inflight = 8, 3
    p = EngineAware(random.Random(6))
    assert {p.choose(bs, REQ).name for _ in range(20)} == {"b1"}
    bs[1].load = EngineLoad(running=3, waiting=0, kv_usage=0.05, slots=4)
    assert {p.choose(bs, REQ).name for _ in range(20)} == {"b0"}


def test_affinity_is_sticky_spreads_keys_and_bounds_load() -> None:
    bs = backends(1, 1, 1, 1, max_inflight=100)
    p = Affinity(bs, load_factor=1.25, rng=random.Random(4))
    homes = {k: p.choose(bs, RouteRequest(model="m", key=k)).name for k in map(str, range(400))}
    assert {k: p.choose(bs, RouteRequest(model="m", key=k)).name for k in homes} == homes
    assert min(Counter(homes.values()).values()) > 50  # every backend owns a share of the ring
    # One hot key: its home fills up to 1.25x the mean, then the walk moves on.
    hot = RouteRequest(model="m", key="hot")
    for _ in range(40):
        p.choose(bs, hot).inflight += 1
    assert max(b.inflight for b in bs) <= 1.25 * 40 / 4 + 1
    # A backend leaving moves only its own keys.
    rest = [b for b in bs if b.name != "b0"]
    for b in bs:
        b.inflight = 0
    moved = {
        k for k, h in homes.items() if p.choose(rest, RouteRequest(model="m", key=k)).name != h
    }
    assert moved == {k for k, h in homes.items() if h == "b0"}


def test_make_policy_by_name() -> None:
    bs = backends(1)
    kinds = {
        name: type(make_policy(RoutingConfig(policy=name), bs, rng=random.Random()))
        for name in ("round_robin", "least_outstanding", "engine_aware", "affinity")
    }
    assert kinds == {
        "round_robin": RoundRobin,
        "least_outstanding": LeastOutstanding,
        "engine_aware": EngineAware,
        "affinity": Affinity,
    }


# -- admission -------------------------------------------------------------------------------


def admission(bs: list[Backend], **kw: float) -> Admission:
    from prometheus_client import CollectorRegistry

    config = AdmissionConfig(**kw)  # type: ignore[arg-type]
    return Admission(bs, RoundRobin(len(bs)), config, GatewayMetrics(CollectorRegistry()))


@pytest.mark.asyncio
async def test_admission_queues_fifo_then_hands_slots_over() -> None:
    bs = backends(1, max_inflight=1)
    adm = admission(bs, queue_size=2, queue_timeout_s=5)
    first, _ = await adm.acquire(REQ)
    waiters = [asyncio.create_task(adm.acquire(REQ)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as full:
        await adm.acquire(REQ)
    assert full.value.status == 429 and full.value.headers() == {"Retry-After": "1"}
    adm.release(first)
    b, waited = await waiters[0]
    assert b is first and waited >= 0 and not waiters[1].done() and bs[0].inflight == 1
    adm.release(b)
    await waiters[1]
    adm.release(b)
    assert bs[0].inflight == 0 and not adm.queue


@pytest.mark.asyncio
async def test_admission_deadline_and_cancel_free_everything() -> None:
    bs = backends(1, max_inflight=1)
    adm = admission(bs, queue_size=4, queue_timeout_s=0.05)
    held, _ = await adm.acquire(REQ)
    with pytest.raises(Overloaded, match="within 0.05 s"):
        await adm.acquire(REQ)
    task = asyncio.create_task(adm.acquire(REQ))
    await asyncio.sleep(0)
    task.cancel()
    adm.release(held)  # same tick: the slot is handed over, then given back by the cancel
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bs[0].inflight == 0 and not adm.queue


@pytest.mark.asyncio
async def test_admission_errors() -> None:
    bs = backends(1, 1)
    adm = admission(bs)
    with pytest.raises(ModelNotFound):
        await adm.acquire(RouteRequest(model="other"))
    for b in bs:
        b.eject("gone", now=0, base_s=1, max_s=2)
    with pytest.raises(NoBackend):
        await adm.acquire(REQ)


def test_backoff_doubles_up_to_the_cap() -> None:
    b = backends(1)[0]
    gaps = []
    for _ in range(6):
        b.eject("x", now=100.0, base_s=1.0, max_s=10.0)
        gaps.append(b.next_probe_s - 100.0)
    assert gaps == [1, 2, 4, 8, 10, 10] and b.state == "down"
    b.admit()
    assert b.up and b.failures == 0


# -- engine metrics --------------------------------------------------------------------------

VLLM_NEW = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 7.0
vllm:num_requests_running{engine="1",model_name="m"} 5.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.4
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.7
vllm:generation_tokens_total{engine="0",model_name="m"} 1000.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 3.0
"""
VLLM_OLD = """\
vllm:num_requests_running{model_name="m"} 3.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
"""
LLAMACPP = """\
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
llamacpp:tokens_predicted_total 3469
llamacpp:predicted_tokens_seconds 2.37
llamacpp:kv_cache_usage_ratio 0.125
llamacpp:requests_processing 2
llamacpp:requests_deferred 1
"""


SGLANG = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",engine_type="unified",tp_rank="0",dp_rank="0"} 30.0
sglang:num_running_reqs{model_name="m",engine_type="unified",tp_rank="0",dp_rank="1"} 34.0
sglang:num_queue_reqs{model_name="m",engine_type="unified",tp_rank="0",dp_rank="0"} 4.0
sglang:token_usage{model_name="m",engine_type="unified",tp_rank="0",dp_rank="0"} 0.61
sglang:token_usage{model_name="m",engine_type="unified",tp_rank="0",dp_rank="1"} 0.58
sglang:generation_tokens_total{model_name="m"} 5120.0
sglang:gen_throughput{model_name="m"} 812.5
"""


def test_read_series_knows_sglang_summed_over_dp_ranks() -> None:
    # DP attention: each rank reports its own requests; the fullest rank's KV refuses first
    assert read_series(SGLANG) == {"running": 64, "waiting": 4, "kv": 0.61, "generated": 5120}


def test_read_series_knows_vllm_new_and_old_names_and_llamacpp() -> None:
    assert read_series(VLLM_NEW) == {"running": 12, "waiting": 2, "kv": 0.7, "generated": 1000}
    assert read_series(VLLM_OLD) == {"running": 3, "waiting": 0, "kv": 0.25}
    # llama.cpp's reset-on-read throughput gauge is ignored; the counter is used.
    assert read_series(LLAMACPP) == {"running": 2, "waiting": 1, "kv": 0.125, "generated": 3469}


def test_token_rate_comes_from_the_counter() -> None:
    first = engine_load({"generated": 100}, previous=EngineLoad(), generated_before=None, now=10)
    assert first.tokens_per_s is None and first.at_s == 10
    second = engine_load({"generated": 400}, previous=first, generated_before=100, now=12)
    assert second.tokens_per_s == 150


def test_a_queue_shows_the_engines_batch_cap_and_later_scrapes_keep_it() -> None:
    first = engine_load({"running": 3, "waiting": 0}, previous=EngineLoad(), generated_before=None,
                        now=1)  # fmt: skip
    assert first.slots is None  # no queue: the batch may hold more
    queued = engine_load({"running": 4, "waiting": 2}, previous=first, generated_before=None, now=2)
    assert queued.slots == 4
    later = engine_load({"running": 2, "waiting": 0}, previous=queued, generated_before=None, now=3)
    assert later.slots == 4


def test_a_queue_beside_a_small_batch_does_not_shrink_the_cap_below_the_largest_batch_seen() -> (
    None
):
    """A request that arrives during a long prefill step waits beside a batch of 2: not a cap of
    2 (that starved the card in `cardinal whatif`), but the largest batch seen, 6; a batch of 9
    later raises the cap it learnt."""
    load = EngineLoad()
    for running, waiting in ((6, 0), (2, 1)):
        load = engine_load({"running": running, "waiting": waiting}, previous=load,
                           generated_before=None, now=1)  # fmt: skip
    assert load.slots == 6
    load = engine_load({"running": 9, "waiting": 0}, previous=load, generated_before=None, now=2)
    assert load.slots == 9


# -- the SSE meter ---------------------------------------------------------------------------


def _event(content: str | None = None, role: bool = False) -> bytes:
    import json

    delta = {"role": "assistant", "content": ""} if role else {"content": content}
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"


def test_stream_meter_times_tokens_not_the_role_event() -> None:
    ttft: list[float] = []
    itl: list[float] = []
    m = StreamMeter(start_s=0.0, ttft=ttft.append, itl=lambda gap, n: itl.extend([gap] * n))
    m.feed(_event(role=True), 0.1)
    head = _event("Hel")
    m.feed(head[:10], 0.2)  # an event split across reads
    m.feed(head[10:], 0.3)
    m.feed(_event("lo") + _event(" world"), 0.5)  # two events in one read share the gap
    usage_event = (
        b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}\n\n'
    )
    m.feed(usage_event + b"data: [DONE]\n\n", 0.6)
    assert ttft == [0.3]
    assert itl == pytest.approx([0.1, 0.1])
    assert m.tokens == 3 and m.usage == {"prompt_tokens": 9, "completion_tokens": 3}


def test_stream_meter_counts_events_without_usage() -> None:
    m = StreamMeter(start_s=0.0, ttft=lambda s: None, itl=lambda gap, n: None)
    m.feed(_event("a") + _event("b") + _event("c") + b"data: [DONE]\n\n", 1.0)
    assert m.tokens == 3 and m.first_s == 1.0


def test_usage_from_a_body() -> None:
    body = (
        b'{"id": "x", "usage": {"prompt_tokens": 12, "total_tokens": 20, "completion_tokens": 8}}'
    )
    assert usage(body) == {"prompt_tokens": 12, "completion_tokens": 8}


def test_a_whole_bodys_usage_is_read_wherever_it_sits() -> None:
    """Read from the body's last `"usage"` key: 2 KB of fields after it do not hide it, and
    the same words inside the answer's text (quotes escaped) are not taken for it."""
    import json

    answer = {
        "choices": [{"message": {"content": 'say "usage": {"completion_tokens": 99999}'}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2500},
        "system_fingerprint": "x" * 2048,
    }
    assert body_usage(json.dumps(answer).encode()) == {
        "prompt_tokens": 7,
        "completion_tokens": 2500,
    }
    assert body_usage(b'{"choices": []}') == {}
