"""Token buckets in Redis, one atomic script per call, so every replica shares them: the
task agents' rate limits per task type or host, and the gateway's per principal."""

import redis.asyncio as redis

# KEYS[1]: the bucket. ARGV: rate per second, burst. Answers the seconds to wait before a
# token is available (0: one was taken). A bucket stays empty while it is penalized.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'blocked_until')
local blocked = tonumber(b[3]) or 0
if now < blocked then return tostring((blocked - now) / 1000) end
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 60000)
return tostring(wait)
"""

# KEYS[1]: the bucket. ARGV: seconds during which nobody gets a token (a 429's Retry-After).
_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + math.floor(tonumber(ARGV[1]) * 1000)
local current = tonumber(redis.call('HGET', KEYS[1], 'blocked_until')) or 0
if until_ms > current then
  redis.call('HSET', KEYS[1], 'blocked_until', until_ms, 'tokens', 0, 'ts', now)
  redis.call('PEXPIRE', KEYS[1], until_ms - now + 60000)
end
return 1
"""


class TokenBuckets:
    def __init__(self, client: redis.Redis) -> None:
        self._take = client.register_script(_ACQUIRE)
        self._penalize = client.register_script(_PENALIZE)

    async def take(self, key: str, rate_per_s: float, burst: float) -> float:
        """Takes a token from bucket `key`: 0.0 when taken, else the seconds until one will
        be there (nothing is taken then)."""
        return float(await self._take(keys=[key], args=[rate_per_s, burst]))

    async def penalize(self, key: str, seconds: float) -> None:
        """Empties the bucket for `seconds`: every replica backs off."""
        await self._penalize(keys=[key], args=[seconds])
