"""Re-route times of the web process's hub on a Redis Cluster, repeated:

- slot migration: a watched job's slot moves to another primary (`migrate_slot`, as
  `redis-cli --cluster reshard` does it); timed from the source primary's answer to its
  `CLUSTER SETSLOT ... NODE` (the step after which it pushes `sunsubscribe` to the hub)
  to the first `PUBSUB SHARDNUMSUB` on the new owner that shows the hub subscribed
  (polled every millisecond on a connection of its own);
- primary killed: the primary of a watched job, which has a replica, gets SIGKILL while
  its job publishes every 20 ms; timed from the kill to the first event after it read by
  the SSE client (the publisher is held while the replica catches up before the kill,
  so that no event is lost in replication; it resumes right after the kill and keeps
  trying until the replica is promoted). The killed node then comes back as a replica
  and the next repetition kills the job's new primary.

The web process is the production command (`bench.servers`), on the server core.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx
from redis.crc import key_slot

from bench.servers import Backend, RunningServer, start_server
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from tests.support.cluster_feeds import Feed, Publishers
from tests.support.redis_cluster import ClusterNode, RedisCluster
from tests.support.server import open_sse, publisher

POLL_S = 0.001
WITHIN_S = 10.0  # a re-route not seen by then counts as failed (None)


@dataclass(slots=True)
class Watched:
    """A job's SSE stream: each event's seq and when (monotonic) the client read it."""

    feed: Feed
    arrivals: list[tuple[int, float]] = field(default_factory=list)

    async def read(self, events: AsyncIterator[object]) -> None:
        async for event in events:
            seq = int(json.loads(event.data)["seq"])  # type: ignore[attr-defined]
            self.arrivals.append((seq, time.monotonic()))

    def last_seq(self) -> int:
        return self.arrivals[-1][0] if self.arrivals else 0

    async def first_after(self, seq: int, within: float) -> float | None:
        """When the first event with a seq above `seq` arrived (awaited, bounded)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = [at for s, at in self.arrivals if s > seq]
            if found:
                return found[0]
            await asyncio.sleep(POLL_S)
        return None


def settings_of(cluster: RedisCluster, queue_url: str, prefix: str) -> Settings:
    return Settings(
        redis_url=cluster.url, celery_broker_url=queue_url, arq_redis_url=queue_url,
        key_prefix=prefix,
    )  # fmt: skip


@asynccontextmanager
async def watching(
    cluster: RedisCluster, settings: Settings, open_files: int, jobs: int
) -> AsyncIterator[tuple[RunningServer, list[Watched]]]:
    """A web process on the cluster with a stream open on each of `jobs` started jobs
    (each has read its `started`: the hub is subscribed)."""
    backend = Backend(
        redis_url=cluster.url, redis_port=cluster.ports[0], key_prefix=settings.key_prefix,
        open_files=open_files, nchan=None, queue_url=settings.arq_redis_url,
    )  # fmt: skip
    pub = publisher(settings)
    watched = [Watched(Feed(uuid.uuid4().hex)) for _ in range(jobs)]
    for w in watched:
        pub.publish(EventDraft(job_id=w.feed.job_id, status=JobStatus.STARTED))
    pub.redis.close()
    server = await asyncio.to_thread(start_server, "ours", backend)
    readers: list[asyncio.Task[None]] = []
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client,
            AsyncExitStack() as stack,
        ):
            for w in watched:
                url = f"/api/v1/jobs/{w.feed.job_id}/events"
                _, events = await stack.enter_async_context(open_sse(client, url))
                readers.append(asyncio.create_task(w.read(events)))
            for w in watched:
                await w.first_after(0, WITHIN_S)
            yield server, watched
            for reader in readers:
                reader.cancel()
    finally:
        await asyncio.to_thread(server.stop)


def first_subscribed(node: ClusterNode, channel: str, within: float) -> float | None:
    """When (monotonic) `node` first shows a sharded subscriber of `channel`."""
    deadline = time.monotonic() + within
    with node.client() as client:
        while time.monotonic() < deadline:
            reply = client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
            if int(reply[1]) > 0:
                return time.monotonic()
            time.sleep(POLL_S)
    return None


async def migrations(queue_url: str, open_files: int, repeats: int) -> list[float | None]:
    """Seconds from the source's hand-over to the hub's SSUBSCRIBE on the new owner."""
    prefix = f"m{uuid.uuid4().hex[:8]}"
    figures: list[float | None] = []
    with RedisCluster(3) as cluster:
        settings = settings_of(cluster, queue_url, prefix)
        async with watching(cluster, settings, open_files, repeats) as (_, watched):
            for w in watched:
                channel = KeySpace(prefix).job(w.feed.job_id).channel
                slot = key_slot(channel.encode())
                old = cluster.owner_of(slot)
                new = next(n for n in cluster.primaries() if n is not old)
                seen = asyncio.create_task(
                    asyncio.to_thread(first_subscribed, new, channel, WITHIN_S)
                )
                released = await asyncio.to_thread(cluster.migrate_slot, slot, new)
                at = await seen
                figures.append(None if at is None else at - released)
    return figures


async def kills(queue_url: str, open_files: int, repeats: int) -> list[float | None]:
    """Seconds from a primary's SIGKILL to the first event after it on the SSE stream,
    a job per repetition (its publisher ends it with `success`)."""
    prefix = f"k{uuid.uuid4().hex[:8]}"
    figures: list[float | None] = []
    with RedisCluster(3, replicas=1) as cluster:
        settings = settings_of(cluster, queue_url, prefix)
        async with watching(cluster, settings, open_files, repeats) as (_, watched):
            for w in watched:
                figures.append(await kill_once(cluster, settings, w))
                await asyncio.to_thread(cluster.wait_replicated)
                await w.first_after(w.feed.published - 1, WITHIN_S)  # its `success`
                if [s for s, _ in w.arrivals] != list(range(1, w.feed.published + 1)):
                    raise AssertionError(f"job {w.feed.job_id}: a gap or a repeat")
    return figures


async def kill_once(cluster: RedisCluster, settings: Settings, w: Watched) -> float | None:
    victim = cluster.owner_of_key(KeySpace(settings.key_prefix).job(w.feed.job_id).channel)
    # Enough events at 20 ms to outlast the failover (node timeout + about 3 s).
    with Publishers(settings, [w.feed], count=250) as publishers:
        await w.first_after(w.last_seq() + 3, WITHIN_S)
        await asyncio.to_thread(publishers.pause)
        victim.command("WAIT", 1, 5000)
        await w.first_after(w.feed.published - 1, WITHIN_S)  # all sent so far were read
        seen = w.last_seq()
        killed = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim)
        publishers.resume()
        at = await w.first_after(seen, WITHIN_S)
    await asyncio.to_thread(cluster.restart, victim)  # back as the new primary's replica
    return None if at is None else at - killed
