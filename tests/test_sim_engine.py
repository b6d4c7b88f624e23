"""The simulated card's continuous-batching engine: scheduling limits and step timing."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from gateway.planner.catalog import load_catalog
from gateway.sim.card import Card, card_from_catalog
from gateway.sim.engine import Engine, EngineConfig, Sequence, SequenceTooLong


class VirtualClock:
    """Time moves only when the engine sleeps: deterministic, and as fast as the CPU allows."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, t: float) -> None:
        self.t = max(self.t, t)
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def card() -> Card:
    # ~1.4 ms decode steps on an H100: fast enough to run hundreds of real steps in a test
    return card_from_catalog(
        load_catalog(), model="deepseek-r1-distill-qwen-1.5b", quant="awq", gpu="h100-sxm"
    )


def engine_for(card: Card, **limits: int) -> Engine:
    return Engine(config=replace(card.engine, **limits), speed=card.speed, clock=VirtualClock())


def step(engine: Engine, clock: VirtualClock | None = None) -> float:
    """Run one step by hand; returns its duration."""
    batch = engine.schedule()
    dt = engine.step_s(batch)
    if clock is not None:
        clock.t += dt
    engine.complete(batch, clock.t if clock else 0.0)
    return dt


def submit_many(engine: Engine, n: int, *, prompt: int = 100, out: int = 50) -> list[Sequence]:
    return [engine.submit(prompt_tokens=prompt, max_tokens=out) for _ in range(n)]


def test_batch_never_exceeds_max_num_seqs(card: Card) -> None:
    engine = engine_for(card, max_num_seqs=4)
    submit_many(engine, 10)
    for _ in range(5):
        step(engine)
        assert engine.num_running == 4
    assert engine.num_waiting == 6


def test_kv_budget_limits_admission(card: Card) -> None:
    engine = engine_for(card, kv_tokens=1000)  # each sequence reserves 100 + 200 tokens
    submit_many(engine, 5, prompt=100, out=200)
    step(engine)
    assert (engine.num_running, engine.num_waiting) == (3, 2)
    assert engine.kv_usage == pytest.approx(3 * 101 / 1000)  # prompt + first token held


def test_fcfs_head_is_not_overtaken(card: Card) -> None:
    engine = engine_for(card, kv_tokens=1000)
    engine.submit(prompt_tokens=500, max_tokens=300)
    big = engine.submit(prompt_tokens=300, max_tokens=200)
    engine.submit(prompt_tokens=10, max_tokens=10)  # would fit, but `big` came first
    step(engine)
    assert engine.num_running == 1 and big.state == "waiting"


def test_chunked_prefill_spreads_a_long_prompt(card: Card) -> None:
    engine = engine_for(card, max_num_batched_tokens=256, max_num_seqs=4)
    (seq,) = submit_many(engine, 1, prompt=600, out=5)
    step(engine)
    step(engine)
    assert (seq.prefilled, seq.generated) == (512, 0)
    step(engine)
    assert (seq.prefilled, seq.generated) == (600, 1)


def test_lone_prompt_takes_the_planners_prefill_time(card: Card) -> None:
    engine = engine_for(card)
    submit_many(engine, 1, prompt=2000, out=5)
    assert step(engine) == pytest.approx(card.speed.prefill_s(2000))


def test_decode_step_is_the_planners_decode_step(card: Card) -> None:
    engine = engine_for(card)
    seqs = submit_many(engine, 8, prompt=100, out=50)
    step(engine)  # prefill + first token
    ctx = sum(s.context for s in seqs) / len(seqs)
    assert step(engine) == pytest.approx(card.speed.decode_step_s(batch=8, ctx=ctx))


def test_queue_grows_when_overloaded(card: Card) -> None:
    engine, clock = engine_for(card, max_num_seqs=2), VirtualClock()
    depth = []
    for _ in range(60):  # one arrival per step; two slots serve one per ~10 steps
        engine.submit(prompt_tokens=50, max_tokens=20)
        step(engine, clock)
        depth.append(engine.num_waiting)
    assert 0 < depth[20] < depth[40] < depth[59]


def test_abort_frees_the_slot_and_kv(card: Card) -> None:
    engine = engine_for(card, max_num_seqs=2, kv_tokens=400)
    first, _, third = submit_many(engine, 3, prompt=100, out=100)
    step(engine)
    assert third.state == "waiting"
    used = engine.kv_usage
    engine.abort(first)
    assert engine.num_running == 1 and engine.kv_usage < used
    step(engine)
    assert third.state == "running"
    engine.abort(first)  # idempotent


@pytest.mark.asyncio
async def test_aborted_sequence_stops_streaming(card: Card) -> None:
    engine = engine_for(card)
    (seq,) = submit_many(engine, 1)
    engine.abort(seq)
    assert [t async for t in seq] == []
    assert engine.num_waiting == 0


def test_too_long_is_refused(card: Card) -> None:
    engine = engine_for(card, kv_tokens=1000)
    with pytest.raises(SequenceTooLong):
        engine.submit(prompt_tokens=900, max_tokens=101)


def test_config_checks_limits() -> None:
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        EngineConfig(kv_tokens=1000, max_num_seqs=64, max_num_batched_tokens=32)


@pytest.mark.asyncio
async def test_run_loop_streams_every_token_on_the_timeline(card: Card) -> None:
    clock = VirtualClock()
    engine = Engine(config=card.engine, speed=card.speed, clock=clock)
    task = asyncio.create_task(engine.run())
    try:
        seq = engine.submit(prompt_tokens=300, max_tokens=40)
        times = [t async for t in seq]
    finally:
        task.cancel()
    assert len(times) == 40 and seq.state == "finished"
    assert times[0] == pytest.approx(card.speed.prefill_s(300))
    assert times == sorted(times)
    assert engine.num_running == 0 and engine.kv_usage == 0


@pytest.mark.asyncio
async def test_real_clock_step_time_matches_the_planner(card: Card) -> None:
    """Wall-clock check: the absolute timeline keeps the mean step on the planner's figure even
    when single wake-ups are late."""
    engine = Engine(config=card.engine, speed=card.speed)
    task = asyncio.create_task(engine.run())
    loop = asyncio.get_running_loop()
    try:
        seqs = submit_many(engine, 4, prompt=100, out=300)
        arrivals: list[float] = []
        async for _ in seqs[0]:
            arrivals.append(loop.time())
        await asyncio.gather(*(_drain(s) for s in seqs[1:]))
    finally:
        task.cancel()
    measured = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    expected = card.speed.decode_step_s(batch=4, ctx=100 + 150)
    assert measured == pytest.approx(expected, rel=0.10)


async def _drain(seq: Sequence) -> None:
    async for _ in seq:
        pass
