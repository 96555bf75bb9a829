"""Limits shared by every replica, kept in Redis and changed atomically by scripts that run
on Redis's own clock, so agents on other machines agree: rate limits (a token bucket per
name) and concurrency limits (at most N holders per key, each holding a lease)."""

import redis.asyncio as redis

from libs.common.redis_client import Keys
from libs.common.token_bucket import TokenBuckets


class RateLimiter:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._keys = keys
        self._buckets = TokenBuckets(client)

    def _bucket(self, name: str) -> str:
        return self._keys.rate_bucket(name)

    async def acquire(self, name: str, rate_per_s: float, burst: float | None = None) -> float:
        """Takes a token from bucket `name`: 0.0 when taken, else the seconds until one will
        be there (nothing is taken then)."""
        if not rate_per_s > 0:
            raise ValueError(f"a rate limit must be positive, not {rate_per_s}")
        burst = max(1.0, burst if burst is not None else rate_per_s)
        return await self._buckets.take(self._bucket(name), rate_per_s, burst)

    async def penalize(self, name: str, seconds: float) -> None:
        """Empties the bucket for `seconds`: every replica backs off (a 429 from upstream)."""
        await self._buckets.penalize(self._bucket(name), seconds)


# KEYS[1]: the holders of a key (sorted set scored by lease expiry). ARGV: limit, holder,
# lease ms. Expired holders (agents that died) are dropped first. Answers 1 if `holder`
# holds a slot now.
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, holder, lease = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], holder) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + lease, holder)
  redis.call('PEXPIRE', KEYS[1], lease + 60000)
  return 1
end
return 0
"""


_RENEW_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
"""


class ConcurrencySlots:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._take = client.register_script(_TAKE_SLOT)
        self._renew = client.register_script(_RENEW_SLOT)

    def _holders(self, key: str) -> str:
        return self._keys.slot_holders(key)

    async def take(self, key: str, limit: int, holder: str, lease_s: float) -> bool:
        """Takes (or renews) one of `limit` slots of `key` for `holder`."""
        taken = await self._take(
            keys=[self._holders(key)], args=[limit, holder, int(lease_s * 1000)]
        )
        return bool(taken)

    async def renew(self, key: str, holder: str, lease_s: float) -> None:
        await self._renew(keys=[self._holders(key)], args=[holder, int(lease_s * 1000)])

    async def release(self, key: str, holder: str) -> None:
        await self._redis.zrem(self._holders(key), holder)
