"""Riding out a Redis Cluster failover: a call that is safe to send again (the publish
script with its idempotency token, the lease script) is retried while the cluster
answers that it is down, moving or unreachable, for up to `FAILOVER_SECONDS`.

The publishers use it in cluster mode only (one Redis has nothing to fail over to, and
its path stays as it was). redis-py's cluster client retries a few times on its own, in
well under a second; a replica takes over a dead primary after `cluster-node-timeout`
plus a second or two (15 s by default), so without this a `success` published in that
window would be lost and the job end `WorkerLost`. When the time is up the last error is
raised as a `redis.ConnectionError` (a `RedisError`, which the integrations handle;
redis-py's `RedisClusterException` is not one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError

log = logging.getLogger(__name__)

T = TypeVar("T")

FAILOVER_SECONDS = 20.0  # above a failover with the default cluster-node-timeout (15 s)
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 1.0

# What a cluster answers while a primary fails over or restarts, or a slot moves.
TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
)


def _gave_up(seconds: float, exc: BaseException) -> redis.ConnectionError:
    return redis.ConnectionError(f"the Redis Cluster did not answer for {seconds:g} s: {exc}")


def through_failover(call: Callable[[], T], *, seconds: float = FAILOVER_SECONDS) -> T:
    """`call()`, sent again with growing pauses while the cluster is failing over."""
    deadline = time.monotonic() + seconds
    pause = FIRST_PAUSE
    while True:
        try:
            return call()
        except TRANSIENT as exc:
            if time.monotonic() + pause > deadline:
                raise _gave_up(seconds, exc) from exc
            log.info("Redis Cluster unavailable (%s); trying again in %.2f s", exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)


async def athrough_failover(
    call: Callable[[], Awaitable[T]], *, seconds: float = FAILOVER_SECONDS
) -> T:
    """`through_failover` for asyncio code."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    pause = FIRST_PAUSE
    while True:
        try:
            return await call()
        except TRANSIENT as exc:
            if loop.time() + pause > deadline:
                raise _gave_up(seconds, exc) from exc
            log.info("Redis Cluster unavailable (%s); trying again in %.2f s", exc, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)
