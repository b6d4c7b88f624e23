"""A benchmark replayed on the simulated card's engine in virtual time: `concurrency` clients,
each sending its next request when the previous answer ends, as fixed-concurrency serving
benchmarks run. No event loop and no sleeping: the clock jumps from step to step."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from gateway.sim.engine import Engine, EngineConfig, Sequence, Speed


class VirtualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, t: float) -> None:  # the engine's loop is not used here
        self.t = max(self.t, t)


@dataclass(frozen=True, kw_only=True)
class ReplayResult:
    requests: int
    ttft_s: float  # mean over the requests, as benchmark tools report it
    tpot_s: float  # mean of (e2e - TTFT) / (output - 1)
    output_tokens_per_s: float
    duration_s: float


def replay_concurrency(
    speed: Speed,
    config: EngineConfig,
    *,
    concurrency: int,
    prompt_tokens: int,
    output_tokens: int,
    requests: int,
) -> ReplayResult:
    """Run `requests` requests through `concurrency` closed-loop clients on one engine."""
    clock = VirtualClock()
    engine = Engine(config=config, speed=speed, clock=clock)
    live: list[Sequence] = []
    done: list[Sequence] = []
    sent = 0
    while len(done) < requests:
        while len(live) < concurrency and sent < requests:
            live.append(engine.submit(prompt_tokens=prompt_tokens, max_tokens=output_tokens))
            sent += 1
        batch = engine.schedule()
        clock.t += engine.step_s(batch)
        engine.complete(batch, clock.t)
        for seq in [s for s in live if s.done]:
            live.remove(seq)
            done.append(seq)
    ttft = [s._times[0] - s.arrival_s for s in done]
    tpot = [(s._times[-1] - s._times[0]) / max(s.generated - 1, 1) for s in done]
    return ReplayResult(
        requests=len(done),
        ttft_s=statistics.fmean(ttft),
        tpot_s=statistics.fmean(tpot),
        output_tokens_per_s=sum(s.generated for s in done) / clock.t,
        duration_s=clock.t,
    )
