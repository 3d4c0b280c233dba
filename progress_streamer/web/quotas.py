"""Per-client quotas kept in Redis, so they hold across every web process of a deployment.

- `POST /api/v1/jobs` and `POST /api/v1/watches`: a token bucket per client address and
  endpoint (`PROGRESS_POST_RATE` per second, bursts of `PROGRESS_POST_BURST`); past it,
  `429 too_many_requests` with `Retry-After`. A request bearing the valid
  `PROGRESS_API_KEY` is a trusted backend and is not limited on `POST /jobs`.
- Watches: at most `PROGRESS_MAX_WATCHES_PER_CLIENT` live watch keys per client address,
  so one job token cannot fill Redis with watches (each watch key also expires with its
  jobs: routes/watches.py).

Both checks are one script call each, timed by Redis's clock (`TIME`), not the web
hosts'. A client's keys expire once idle, so a quota costs Redis nothing afterwards.
"""

from __future__ import annotations

import hashlib
import math

from progress_streamer.protocol.connections import AsyncRedis, ascript
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.settings import Settings
from progress_streamer.web.errors import ApiError

# Take one token from a bucket that refills at a steady rate.
# KEYS[1] the bucket hash (`tokens`, `at`)
# ARGV[1] refill rate, tokens per second   ARGV[2] burst (the bucket's size)
# Returns {1, tokens left} when a token was taken, {0, seconds until one is there}.
TAKE_TOKEN = r"""
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if taken == 1 then return {1, tostring(tokens)} end
return {0, tostring((1 - tokens) / rate)}
"""

# Add a watch to a client's set of live watches, unless it holds too many.
# KEYS[1] sorted set of the client's watch ids by expiry (ms, Redis time)
# ARGV[1] watch id   ARGV[2] the watch's lifetime, ms   ARGV[3] the most a client may hold
# Returns 1 when added, 0 when the client is at its bound.
ADD_WATCH = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
local expires = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.max(expires, tonumber(last[2])))
return 1
"""


class Quotas:
    """The quota checks of one app, on its Redis client."""

    def __init__(self, client: AsyncRedis, settings: Settings) -> None:
        self.settings = settings
        self.keyspace = KeySpace(settings.key_prefix)
        self._take = ascript(client, TAKE_TOKEN)
        self._add_watch = ascript(client, ADD_WATCH)

    async def take(self, endpoint: str, client: str) -> None:
        """One request of `client` to `endpoint`, or `429` with when to retry."""
        rate, burst = self.settings.post_rate, self.settings.post_burst
        if rate <= 0:
            return
        key = self.keyspace.post_bucket(endpoint, _tag(client))
        taken, value = await self._take(keys=[key], args=[rate, burst])
        if not taken:
            wait = max(1, math.ceil(float(value)))
            raise ApiError(
                429,
                "too_many_requests",
                f"too many requests to {endpoint} from this client; retry in {wait} s",
                {"Retry-After": str(wait)},
            )

    async def add_watch(self, client: str, watch_id: str, lifetime_ms: int) -> None:
        """Count a new watch against `client`'s bound, or `429` when it is reached."""
        bound = self.settings.max_watches_per_client
        key = self.keyspace.live_watches(_tag(client))
        if not await self._add_watch(keys=[key], args=[watch_id, lifetime_ms, bound]):
            raise ApiError(
                429,
                "too_many_requests",
                f"this client holds {bound} live watches (PROGRESS_MAX_WATCHES_PER_CLIENT); "
                "let some expire or reuse one",
                {"Retry-After": "60"},
            )


def _tag(client: str) -> str:
    """A short, brace-free key part for any address (IPv6, or a forwarded value)."""
    return hashlib.blake2b(client.encode(), digest_size=12).hexdigest()
