"""Per-key limits in Redis, shared by every gateway replica: the token buckets of `bucket.py` run
as Lua scripts, so each decision is one atomic round trip, on Redis's clock (replicas' clocks may
disagree), and every key expires once its bucket would be full again.

Running requests are a sorted set of leases: a replica that dies without releasing its requests
frees their slots when the leases run out.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.server.bucket import CONCURRENT_RETRY_S, Verdict, rates, verdict
from gateway.server.config import KeyLimits

# Anything a Redis call may raise when the server is down, slow or restarting.
STORE_ERRORS = (RedisError, OSError, TimeoutError)

_CLOCK_AND_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, per_s, burst)
  if per_s <= 0 then return nil end
  local v = redis.call('HMGET', key, 'level', 'at')
  if not v[1] then return burst end
  return math.min(burst, tonumber(v[1]) + (now - tonumber(v[2])) * per_s)
end
local function store(key, lvl, per_s, burst)
  redis.call('HSET', key, 'level', tostring(lvl), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((burst - lvl) / per_s * 1000) + 1000)
end
"""

# KEYS: requests bucket, tokens bucket, running leases.
# ARGV: requests/s, requests burst, tokens/s, tokens burst, max running, member, lease s, retry s
ADMIT = (
    _CLOCK_AND_BUCKETS
    + """
local rps, rburst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tps, tburst = tonumber(ARGV[3]), tonumber(ARGV[4])
local maxrun, member, lease = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local req = level(KEYS[1], rps, rburst)
local tok = level(KEYS[2], tps, tburst)
local running = 0
if maxrun > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  running = redis.call('ZCARD', KEYS[3])
end
local denied, wait = '', 0
if req and req < 1 then denied, wait = 'requests', (1 - req) / rps
elseif tok and tok <= 0 then denied, wait = 'tokens', -tok / tps + 0.001
elseif maxrun > 0 and running >= maxrun then denied, wait = 'concurrent', tonumber(ARGV[8])
end
if denied == '' then
  if req then
    req = req - 1
    store(KEYS[1], req, rps, rburst)
  end
  if maxrun > 0 then
    redis.call('ZADD', KEYS[3], now + lease, member)
    redis.call('EXPIRE', KEYS[3], math.ceil(lease))
  end
end
return {denied, tostring(wait), req and tostring(req) or '', tok and tostring(tok) or ''}
"""
)

# KEYS: tokens bucket, running leases. ARGV: tokens/s, tokens burst, tokens used, member
SETTLE = (
    _CLOCK_AND_BUCKETS
    + """
redis.call('ZREM', KEYS[2], ARGV[4])
local tps, tburst, used = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tps > 0 and used > 0 then
  store(KEYS[1], level(KEYS[1], tps, tburst) - used, tps, tburst)
end
return 1
"""
)


class RedisStore:
    name = "redis"

    def __init__(
        self, url: str, *, timeout_s: float, lease_s: float, prefix: str = "cardinal:limits:"
    ) -> None:
        # No retries inside the client: the limiter falls back to local limits at once instead.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._admit = self._redis.register_script(ADMIT)
        self._settle = self._redis.register_script(SETTLE)
        self._lease_s = lease_s
        self._prefix = prefix

    def _keys(self, key: str) -> tuple[str, str, str]:
        # The braces keep one client's keys in one Redis Cluster slot, as Lua needs.
        base = f"{self._prefix}{{{key}}}"
        return base + ":requests", base + ":tokens", base + ":running"

    async def admit(self, key: str, limits: KeyLimits, member: str) -> Verdict:
        r, t = rates(limits)
        args = [
            r.per_s if r else 0,
            r.burst if r else 0,
            t.per_s if t else 0,
            t.burst if t else 0,
            limits.max_concurrent or 0,
            member,
            self._lease_s,
            CONCURRENT_RETRY_S,
        ]
        denied, wait, req, tok = await self._admit(keys=self._keys(key), args=args)
        return verdict(denied.decode() or None, float(wait), _number(req), r, _number(tok), t)

    async def settle(self, key: str, limits: KeyLimits, tokens: int, member: str) -> None:
        _, t = rates(limits)
        _, tokens_key, running_key = self._keys(key)
        args = [t.per_s if t else 0, t.burst if t else 0, tokens, member]
        await self._settle(keys=[tokens_key, running_key], args=args)

    async def close(self) -> None:
        await self._redis.aclose()


def _number(raw: bytes) -> float | None:
    return float(raw) if raw else None
