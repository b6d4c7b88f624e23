"""Per-key limits: requests per minute, tokens per minute and concurrent requests, in Redis when
`limits.redis_url` is set (every replica shares them) and in memory otherwise.

When Redis fails, the gateway goes on with local limits for `redis_retry_s`, then tries Redis
again; `gateway_limits_backend{store}` says which is in use. Local limits are per replica, so while
Redis is out N replicas let through up to N times a key's rate: better than refusing everyone.
The worker processes of one replica share its local limits: the first process holds them for the
others (`shared_limits.py`); a worker that cannot reach it keeps its own until it can again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Protocol

from gateway.server.bucket import LocalStore, Verdict
from gateway.server.config import ClientKey, KeyLimits, LimitsConfig
from gateway.server.errors import RateLimited
from gateway.server.metrics import GatewayMetrics
from gateway.server.redis_store import STORE_ERRORS, RedisStore

log = logging.getLogger("cardinal.gateway.limits")

SETTLE_TRIES = 3  # a settlement that Redis misses is retried; after that its lease expires


class Store(Protocol):
    name: str

    async def admit(self, key: str, limits: KeyLimits, member: str) -> Verdict: ...

    async def settle(self, key: str, limits: KeyLimits, tokens: int, member: str) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True, kw_only=True)
class Ticket:
    """An admitted request's hold on its key's limits, given back by `Limiter.settle`."""

    key: str
    limits: KeyLimits
    member: str
    store: Store
    headers: dict[str, str]


class Limiter:
    def __init__(
        self,
        config: LimitsConfig,
        metrics: GatewayMetrics,
        *,
        local: LocalStore | None = None,
        parent: Store | None = None,
    ) -> None:
        """`local`: this process's buckets (the first process passes those it shares);
        `parent`: in a worker, the first process's, used before its own."""
        self.config = config
        self.metrics = metrics
        self.local = local or LocalStore()
        self.parent = parent
        self._parent_down = False
        self.redis: RedisStore | None = None
        self._retired: list[RedisStore] = []
        self._redis_url: str | None = None
        self._down_until = 0.0
        self._down = False
        self._member = f"{uuid.uuid4().hex[:12]}:%d"  # unique across replicas
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self.reconfigure(config)
        for store in ("redis", "local"):
            gauge = metrics.limits_backend.labels(store)
            gauge.set_function(lambda store=store: float(self.store_name == store))

    @property
    def store_name(self) -> str:
        return "redis" if self.redis is not None and not self._down else "local"

    def reconfigure(self, config: LimitsConfig) -> None:
        """New limits from a reload; a new Redis URL gets a new client (the old one closes last)."""
        self.config = config
        if config.redis_url != self._redis_url:
            if self.redis is not None:
                self._retired.append(self.redis)
            self._redis_url = config.redis_url
            self.redis = None
            self._down = False
            if config.redis_url:
                self.redis = RedisStore(
                    config.redis_url,
                    timeout_s=config.redis_timeout_s,
                    lease_s=config.concurrency_lease_s,
                )

    def limits_for(self, key: ClientKey) -> KeyLimits:
        return key.limits.over(self.config.default)

    async def admit(self, key: ClientKey) -> Ticket | None:
        """A hold on `key`'s limits (None: the key has none); RateLimited when over one."""
        limits = self.limits_for(key)
        if not limits.any:
            return None
        member = self._member % next(self._seq)
        store, verdict = await self._decide(key.name, limits, member)
        headers = rate_headers(limits, verdict)
        if verdict.denied is not None:
            self.metrics.child(self.metrics.rejected, f"key_{verdict.denied}").inc()
            headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after_s)))
            raise RateLimited(_message(key.name, limits, verdict), headers=headers)
        return Ticket(key=key.name, limits=limits, member=member, store=store, headers=headers)

    def settle(self, ticket: Ticket, *, tokens: int) -> None:
        """Give back the concurrent slot and charge the tokens, in the background: the request
        may be ending because its task was cancelled."""
        task = asyncio.create_task(self._settle(ticket, tokens), name="limits-settle")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2 * self.config.redis_timeout_s * SETTLE_TRIES)
        for store in [*self._retired, *([self.redis] if self.redis else [])]:
            await store.close()
        if self.parent is not None:
            await self.parent.close()

    async def _decide(self, key: str, limits: KeyLimits, member: str) -> tuple[Store, Verdict]:
        loop = asyncio.get_running_loop()
        if self.redis is not None and loop.time() >= self._down_until:
            try:
                verdict = await self.redis.admit(key, limits, member)
            except STORE_ERRORS as e:
                self._redis_failed(e)
            else:
                if self._down:
                    self._down = False
                    log.warning("limits: Redis is back; limits are shared again")
                return self.redis, verdict
        if self.parent is not None:
            try:
                verdict = await self.parent.admit(key, limits, member)
            except STORE_ERRORS as e:
                self._parent_failed(e)
            else:
                if self._parent_down:
                    self._parent_down = False
                    log.warning("limits: the first process answers again; limits are shared")
                return self.parent, verdict
        return self.local, await self.local.admit(key, limits, member)

    def _parent_failed(self, error: BaseException) -> None:
        if not self._parent_down:
            self._parent_down = True
            log.warning(
                "limits: the gateway's first process does not answer (%s); this worker's own "
                "limits until it does",
                _describe(error),
            )

    async def _settle(self, ticket: Ticket, tokens: int) -> None:
        for attempt in range(SETTLE_TRIES):
            try:
                await ticket.store.settle(ticket.key, ticket.limits, tokens, ticket.member)
                return
            except STORE_ERRORS as e:
                if isinstance(ticket.store, RedisStore):
                    self.metrics.redis_errors.inc()
                if attempt + 1 == SETTLE_TRIES:
                    log.warning(
                        "limits: could not settle a request in %s: %s",
                        ticket.store.name,
                        _describe(e),
                    )
                    return
                await asyncio.sleep(self.config.redis_retry_s)

    def _redis_failed(self, error: BaseException) -> None:
        self.metrics.redis_errors.inc()
        self._down_until = asyncio.get_running_loop().time() + self.config.redis_retry_s
        if not self._down:
            self._down = True
            log.warning(
                "limits: Redis unreachable (%s); local limits until it answers again",
                _describe(error),
            )


def rate_headers(limits: KeyLimits, verdict: Verdict) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for the limits a key has."""
    headers: dict[str, str] = {}
    if limits.requests_per_minute and verdict.requests_left is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(int(verdict.requests_left))
        headers["x-ratelimit-reset-requests"] = duration(verdict.requests_reset_s)
    if limits.tokens_per_minute and verdict.tokens_left is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(int(verdict.tokens_left))
        headers["x-ratelimit-reset-tokens"] = duration(verdict.tokens_reset_s)
    return headers


def duration(seconds: float) -> str:
    """As OpenAI writes resets: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def _message(name: str, limits: KeyLimits, verdict: Verdict) -> str:
    bound = {
        "requests": f"{limits.requests_per_minute} requests per minute",
        "tokens": f"{limits.tokens_per_minute} tokens per minute",
        "concurrent": f"{limits.max_concurrent} concurrent requests",
    }[verdict.denied or "requests"]
    return (
        f"Rate limit reached for key {name!r}: {bound}. "
        f"Please try again in {duration(verdict.retry_after_s)}."
    )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
