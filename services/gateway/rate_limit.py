"""Requests per principal, limited across every gateway replica: a token bucket per subject
in Redis, refilled at `rate_limit_per_s` up to `rate_limit_burst`, and taken from by one
script that runs on Redis's own clock (the approach of services/task_agent/limits.py), so
replicas on other machines agree."""

import math

import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError

from libs.common.errors import ResourceExhausted
from libs.common.token_bucket import TokenBuckets

log = structlog.get_logger(__name__)


class PrincipalRateLimit:
    """`rate_per_s` or `burst` 0: no limit."""

    def __init__(self, client: redis.Redis, prefix: str, rate_per_s: float, burst: int) -> None:
        self._prefix = prefix
        self._rate = rate_per_s
        self._burst = burst
        self._buckets = TokenBuckets(client)

    @property
    def enabled(self) -> bool:
        return self._rate > 0 and self._burst > 0

    def bucket(self, subject: str) -> str:
        return f"{self._prefix}:{{gw-rate:{subject}}}"

    async def take(self, subject: str) -> None:
        """Counts one request of `subject`; raises ResourceExhausted, with the whole seconds
        until the next token, when its bucket is empty."""
        if not self.enabled:
            return
        try:
            wait = await self._buckets.take(self.bucket(subject), self._rate, self._burst)
        except RedisError:
            # The limit protects the services; it must not take the API down with Redis.
            log.warning("rate limit not checked: Redis failed", subject=subject, exc_info=True)
            return
        if wait > 0:
            raise ResourceExhausted(
                f"rate limit exceeded: {self._rate:g} requests per second, bursts of {self._burst}",
                retry_after_s=max(1, math.ceil(wait)),
            )
