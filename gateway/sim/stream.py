"""A sequence's tokens grouped into response events, with vLLM's latency metrics recorded from the
engine's token times (so grouping tokens per event never changes the measured timing)."""

from __future__ import annotations

import time

from gateway.sim.engine import Sequence
from gateway.sim.metrics import CardMetrics
from gateway.sim.prompt import token_text


def chunk_text(start: int, n: int) -> str:
    """The text of generated tokens start .. start + n - 1."""
    return "".join(token_text(i) for i in range(start, start + n))


class TokenEvents:
    """`async for n in events`: the first token alone (exact TTFT), then `per_event` at a time."""

    def __init__(
        self,
        seq: Sequence,
        metrics: CardMetrics,
        *,
        per_event: int = 1,
        stop_after: int | None = None,
    ) -> None:
        self.seq = seq
        self.cut = False  # ended early by an injected crash after `stop_after` tokens
        self.created = int(time.time())
        self.generated = 0
        self._metrics = metrics
        self._per_event = max(1, per_event)
        self._last_s = seq.arrival_s
        self._stop_after = stop_after if stop_after is not None else seq.max_tokens

    @property
    def ended_after_this(self) -> bool:
        """All of `max_tokens` have been handed out."""
        return self.generated >= self.seq.max_tokens

    @property
    def finish_reason(self) -> str:
        return "length" if self.ended_after_this else "abort"

    def usage(self) -> dict[str, int]:
        p = self.seq.prompt_tokens
        return {
            "prompt_tokens": p,
            "completion_tokens": self.generated,
            "total_tokens": p + self.generated,
        }

    def __aiter__(self) -> TokenEvents:
        return self

    async def __anext__(self) -> int:
        limit = 1 if self.generated == 0 else self._per_event
        limit = min(limit, self._stop_after - self.generated)
        if limit <= 0:
            self.cut = not self.ended_after_this
            raise StopAsyncIteration
        times = await self.seq.tokens(self.generated, limit)
        if not times:
            raise StopAsyncIteration
        for t in times:
            self._observe(t)
        return len(times)

    def _observe(self, t: float) -> None:
        if self.generated == 0:
            self._metrics.first_token(prompt_tokens=self.seq.prompt_tokens, ttft_s=t - self._last_s)
        else:
            self._metrics.next_token(itl_s=t - self._last_s)
        self._last_s = t
        self.generated += 1
        if self.ended_after_this:
            self._metrics.finished(e2e_s=t - self.seq.arrival_s)
