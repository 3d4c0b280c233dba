"""The hub on a Redis Cluster: one pub/sub connection per primary, and channels that
follow their slot when it migrates, when its primary restarts or fails over, or when
the cluster is down (CLUSTERDOWN)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager

import httpx
import pytest
from redis.crc import key_slot

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer
from tests.support.cluster_feeds import Feed, Publishers
from tests.support.redis_cluster import (
    ClusterNode,
    RedisCluster,
    running_cluster,
    shard_subscribers,
)
from tests.support.reliability import WebProcess, report, until, web_process
from tests.support.server import SSEEvent, eventually, open_sse, publisher, running_server

pytestmark = pytest.mark.cluster


def cluster_settings(cluster: RedisCluster, broker: RedisServer, prefix: str) -> Settings:
    return Settings(
        redis_url=cluster.url,
        celery_broker_url=broker.url,
        arq_redis_url=broker.url,
        key_prefix=prefix,
        auth="none",
    )


@contextmanager
def cluster_web(settings: Settings, broker: RedisServer) -> Iterator[WebProcess]:
    """The production web command on the cluster: a process of its own, as deployed (and
    so that what redis-py's cluster client leaves open while a primary restarts, a
    ResourceWarning when collected, is its own and not the test runner's)."""
    with web_process(settings, CELERY_BROKER_URL=broker.url, ARQ_REDIS_URL=broker.url) as web:
        try:
            yield web
        finally:
            print(web.log()[-20000:])


def hub_connections_on(node: ClusterNode, prefix: str) -> int:
    with node.client() as client:
        clients = client.client_list(_type="pubsub")
    return sum(1 for c in clients if c.get("name") == f"progress-hub-{prefix}")


def metric(server_text: str, name: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in server_text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def connected_nodes(text: str) -> set[str]:
    """The nodes `progress_pubsub_connections` says the hub is connected to."""
    found = re.findall(r'^progress_pubsub_connections\{node="([^"]+)"\} 1\.0$', text, re.M)
    return set(found)


async def test_300_jobs_over_3_primaries_hold_one_pubsub_connection_per_primary(
    redis_cluster: RedisCluster, redis_server: RedisServer, prefix: str
) -> None:
    settings = cluster_settings(redis_cluster, redis_server, prefix).replace(
        max_streams_per_client=1000
    )
    keys = KeySpace(prefix)
    pub = publisher(settings)
    jobs = [uuid.uuid4().hex for _ in range(300)]
    for job in jobs:
        pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    owners = {redis_cluster.owner_of_key(keys.job(job).channel).port for job in jobs}
    assert len(owners) == 3  # the jobs are spread over every primary
    limits = httpx.Limits(max_connections=320, max_keepalive_connections=0)
    try:
        with running_server(settings) as server:
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client,
                AsyncExitStack() as stack,
            ):
                streams = [
                    await stack.enter_async_context(open_sse(client, f"/api/v1/jobs/{job}/events"))
                    for job in jobs
                ]
                firsts = await asyncio.gather(*(anext(events) for _, events in streams))
                assert {json.loads(e.data)["status"] for e in firsts} == {"started"}
                primaries = redis_cluster.primaries()
                assert [hub_connections_on(node, prefix) for node in primaries] == [1, 1, 1]
                for job in jobs:
                    channel = keys.job(job).channel
                    assert shard_subscribers(redis_cluster.owner_of_key(channel), channel) == 1
                for job in jobs:
                    pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))

                async def rest(events: object) -> list[SSEEvent]:
                    return [e async for e in events]  # type: ignore[attr-defined]

                ends = await asyncio.gather(*(rest(events) for _, events in streams))
                assert all([json.loads(e.data)["seq"] for e in end] == [2] for end in ends)
                text = (await client.get("/metrics")).text
                assert metric(text, "progress_pubsub_connections") == 3
    finally:
        pub.redis.close()


async def _collect(events: object, feed: Feed) -> None:
    async for event in events:  # type: ignore[attr-defined]
        feed.received.append(json.loads(event.data))


def _started_feeds(pub: Publisher, count: int = 4) -> list[Feed]:
    """Jobs that have started, a feed to collect each one's stream."""
    feeds = [Feed(uuid.uuid4().hex) for _ in range(count)]
    for feed in feeds:
        pub.publish(EventDraft(job_id=feed.job_id, status=JobStatus.STARTED))
    return feeds


@asynccontextmanager
async def _following(
    url: str, feeds: list[Feed]
) -> AsyncIterator[tuple[httpx.AsyncClient, list[asyncio.Task[None]]]]:
    """A stream per feed from the server at `url`, each collected by its own task, open
    until the block ends; the client, for the block's other requests."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client, AsyncExitStack() as stack:
        readers = []
        for feed in feeds:
            path = f"/api/v1/jobs/{feed.job_id}/events"
            _, events = await stack.enter_async_context(open_sse(client, path))
            readers.append(asyncio.create_task(_collect(events, feed)))
        yield client, readers


def _assert_contiguous(feeds: list[Feed], pub: Publisher, keys: KeySpace) -> None:
    for feed in feeds:
        seqs = [e["seq"] for e in feed.received]
        state_seq = int(pub.redis.hget(keys.job(feed.job_id).state, "seq"))  # type: ignore[arg-type]
        assert seqs == list(range(1, state_seq + 1)), (feed.job_id, seqs)
        assert feed.received[-1]["status"] == "success"


async def _wait_for_seq(feed: Feed, seq: int, within: float) -> None:
    await eventually(lambda: bool(feed.received) and feed.received[-1]["seq"] >= seq, within)


async def test_a_slot_migration_mid_stream_reroutes_within_a_second_without_gap_or_repeat(
    redis_server: RedisServer, prefix: str
) -> None:
    keys = KeySpace(prefix)
    with running_cluster(3) as cluster:
        settings = cluster_settings(cluster, redis_server, prefix)
        pub = publisher(settings)
        feeds = _started_feeds(pub)
        try:
            with running_server(settings) as server:
                async with _following(server.url, feeds) as (client, readers):
                    figures: list[tuple[float, float]] = []
                    with Publishers(settings, feeds, count=100):
                        for feed in feeds:  # mid-stream: each job's slot moves
                            await _wait_for_seq(feed, feeds[0].published // 2 + 5, 10)
                            channel = keys.job(feed.job_id).channel
                            slot = key_slot(channel.encode())
                            old = cluster.owner_of(slot)
                            new = next(n for n in cluster.primaries() if n is not old)
                            started = time.monotonic()
                            await asyncio.to_thread(cluster.migrate_slot, slot, new)
                            moved = time.monotonic() - started
                            check = lambda: shard_subscribers(new, channel) == 1  # noqa: B023, E731
                            after = await until(check, 1.0, "re-subscribed on the new owner")
                            figures.append((round(moved, 3), round(after, 3)))
                        await asyncio.wait_for(asyncio.gather(*readers), 60)
                    text = (await client.get("/metrics")).text
            _assert_contiguous(feeds, pub, keys)
            assert metric(text, "progress_reroutes_total") >= 4
            report("cluster slot migration", migrate_then_resubscribed_s=figures)
        finally:
            pub.redis.close()


async def test_a_primary_restarted_mid_stream_streams_reach_the_terminal(
    redis_server: RedisServer, prefix: str
) -> None:
    keys = KeySpace(prefix)
    with running_cluster(3) as cluster:
        settings = cluster_settings(cluster, redis_server, prefix)
        pub = publisher(settings)
        feeds = _started_feeds(pub)
        victim = cluster.owner_of_key(keys.job(feeds[0].job_id).channel)
        try:
            with cluster_web(settings, redis_server) as web:
                async with _following(web.url, feeds) as (client, readers):
                    with Publishers(settings, feeds, count=60):
                        await _wait_for_seq(feeds[0], 10, 10)
                        seen = int(feeds[0].received[-1]["seq"])  # type: ignore[call-overload]
                        started = time.monotonic()
                        await asyncio.to_thread(cluster.restart, victim)  # SIGTERM, start
                        back = time.monotonic() - started
                        await _wait_for_seq(feeds[0], seen + 1, 10)
                        flowing = time.monotonic() - started
                        await asyncio.wait_for(asyncio.gather(*readers), 60)
                    reconnects = (await web.metrics(client))["progress_redis_reconnects_total"]
            _assert_contiguous(feeds, pub, keys)
            assert reconnects >= 1
            report("cluster primary restart", back_s=round(back, 3), flowing_s=round(flowing, 3))
        finally:
            pub.redis.close()


async def test_a_primary_killed_with_a_replica_streams_resume_within_5_s(
    redis_server: RedisServer, prefix: str
) -> None:
    keys = KeySpace(prefix)
    with running_cluster(3, replicas=1) as cluster:
        settings = cluster_settings(cluster, redis_server, prefix)
        pub = publisher(settings)
        feeds = _started_feeds(pub)
        victim = cluster.owner_of_key(keys.job(feeds[0].job_id).channel)
        try:
            with cluster_web(settings, redis_server) as web:
                async with _following(web.url, feeds) as (client, readers):
                    with Publishers(settings, feeds, count=150) as publishers:
                        await _wait_for_seq(feeds[0], 10, 10)
                        # The kill lands between two publishes, once the replica has them
                        # all (replication is asynchronous: a write it missed would end
                        # the stream StateLost, which another test covers).
                        await asyncio.to_thread(publishers.pause)
                        victim.command("WAIT", 1, 5000)
                        killed_at = time.monotonic()
                        await asyncio.to_thread(cluster.kill, victim)
                        seen = int(feeds[0].received[-1]["seq"])  # type: ignore[call-overload]
                        publishers.resume()
                        await _wait_for_seq(feeds[0], seen + 1, 10)
                        resumed = time.monotonic() - killed_at
                        await asyncio.wait_for(asyncio.gather(*readers), 60)
                    text = (await client.get("/metrics")).text
            _assert_contiguous(feeds, pub, keys)
            assert resumed < 5.0
            report("cluster primary killed, replica promoted", resumed_s=round(resumed, 3))
            # One connection per primary now serving a watched job; none to the dead one.
            owners = {cluster.owner_of_key(keys.job(f.job_id).channel).port for f in feeds}
            assert connected_nodes(text) == {f"127.0.0.1:{port}" for port in owners}
            assert metric(text, "progress_reroutes_total") >= 1
        finally:
            pub.redis.close()


async def test_a_manual_failover_moves_the_channels_to_the_promoted_replica(
    redis_server: RedisServer, prefix: str
) -> None:
    # The old primary pushes `sunsubscribe` and keeps the connection: the hub re-routes
    # on the push, and closes its connection to the node, now a replica. Regression: the
    # map read right after the push could come from a node that had not heard of the
    # promotion yet, and the old primary, now a replica, accepted the SSUBSCRIBE: the
    # channel stayed there (this failed about 4 runs in 10 before `STALE_MAP_SECONDS`).
    keys = KeySpace(prefix)
    with running_cluster(3, replicas=1) as cluster:
        settings = cluster_settings(cluster, redis_server, prefix)
        pub = publisher(settings)
        feeds = _started_feeds(pub)
        old = cluster.owner_of_key(keys.job(feeds[0].job_id).channel)
        replica = cluster.replicas_of(old)[0]
        try:
            with running_server(settings) as server:
                async with _following(server.url, feeds) as (client, readers):
                    with Publishers(settings, feeds, count=100):
                        await _wait_for_seq(feeds[0], 10, 10)
                        await asyncio.to_thread(cluster.failover, replica)
                        channel = keys.job(feeds[0].job_id).channel
                        check = lambda: shard_subscribers(replica, channel) == 1  # noqa: E731
                        # The push comes once the old primary learns of the promotion
                        # (cluster gossip): the bound of a failover, not a migration's.
                        await until(check, 5.0, "re-subscribed on the promoted replica")
                        await asyncio.wait_for(asyncio.gather(*readers), 60)
                    text = (await client.get("/metrics")).text
            _assert_contiguous(feeds, pub, keys)
            assert f"127.0.0.1:{old.port}" not in connected_nodes(text)
            assert f"127.0.0.1:{replica.port}" in connected_nodes(text)
        finally:
            pub.redis.close()


async def test_a_channel_subscribed_on_a_stale_map_follows_moved(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The hub refreshes its slot map only when a channel must move: a slot that migrated
    # while nobody watched it is still on the old owner in its map, which answers MOVED.
    keys = KeySpace(prefix)
    with running_cluster(3) as cluster:
        settings = cluster_settings(cluster, redis_server, prefix)
        pub = publisher(settings)
        first, second = uuid.uuid4().hex, uuid.uuid4().hex
        for job in (first, second):
            pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
        caplog.set_level(logging.INFO, logger="progress_streamer.web.streaming.hub")
        try:
            with running_server(settings) as server:
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                    async with open_sse(client, f"/api/v1/jobs/{first}/events") as (_, events):
                        await anext(events)  # the hub has read the slot map
                    channel = keys.job(second).channel
                    slot = key_slot(channel.encode())
                    old = cluster.owner_of(slot)
                    new = next(n for n in cluster.primaries() if n is not old)
                    await asyncio.to_thread(cluster.migrate_slot, slot, new)
                    url = f"/api/v1/jobs/{second}/events"
                    async with open_sse(client, url) as (_, events):
                        assert json.loads((await anext(events)).data)["seq"] == 1
                        assert shard_subscribers(new, channel) == 1
                        pub.publish(EventDraft(job_id=second, status=JobStatus.SUCCESS))
                        rest = [json.loads(e.data)["seq"] async for e in events]
            assert rest == [2]
            assert any("(MovedError: " in r.getMessage() for r in caplog.records)
        finally:
            pub.redis.close()


# Redis 7 serves sharded pub/sub on a failed cluster by default; with this option off, a
# primary answers SSUBSCRIBE with `-CLUSTERDOWN` while the cluster is down.
PUBSUB_DOWN = ("--cluster-allow-pubsubshard-when-down", "no")


def job_on(cluster: RedisCluster, keys: KeySpace, node: ClusterNode) -> str:
    """A new job id whose channel's slot `node` serves."""
    while True:
        job = uuid.uuid4().hex
        if cluster.owner_of_key(keys.job(job).channel) is node:
            return job


def kill_hub_connections(node: ClusterNode, prefix: str) -> int:
    """Close the hub's pub/sub connections on `node` from the server side."""
    with node.client() as client:
        ids = [
            c["id"]
            for c in client.client_list(_type="pubsub")
            if c.get("name") == f"progress-hub-{prefix}"
        ]
        for client_id in ids:
            client.client_kill_filter(_id=client_id)
    return len(ids)


def ssubscribes_refused(node: ClusterNode) -> int:
    """The SSUBSCRIBEs `node` refused (CLUSTERDOWN, MOVED) since it started."""
    with node.client() as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_ssubscribe", {}).get("rejected_calls", 0))


async def test_a_cluster_down_refuses_ssubscribe_and_the_hub_retries_until_it_is_back(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A primary with no replica killed: the others say cluster_state:fail. The hub's
    # connection to a surviving primary is then closed, so it must subscribe its channel
    # again, and is refused (CLUSTERDOWN) until the dead primary is back. One feed per
    # primary: on the dead one (its reconnect meets CLUSTERDOWN during its rejoin delay),
    # on the refusing one, on one whose connection stays (publishes refused meanwhile).
    keys = KeySpace(prefix)
    with running_cluster(3, options=PUBSUB_DOWN) as cluster:
        settings = cluster_settings(cluster, redis_server, prefix)
        pub = publisher(settings)
        dead, alive, other = cluster.primaries()
        feeds = [Feed(job_on(cluster, keys, node)) for node in (dead, alive, other)]
        late = job_on(cluster, keys, alive)  # a stream opened while the cluster is down
        for job in [*(f.job_id for f in feeds), late]:
            pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
        caplog.set_level(logging.INFO, logger="progress_streamer.web.streaming.hub")
        try:
            with running_server(settings) as server:
                async with _following(server.url, feeds) as (client, readers):
                    with Publishers(settings, feeds, count=60) as publishers:
                        await _wait_for_seq(feeds[1], 5, 10)
                        # Parked while the cluster goes down; resumed (and refused, and
                        # tried again) before it is back: the first events published
                        # once it is ok race the hub's next SSUBSCRIBE.
                        await asyncio.to_thread(publishers.pause)
                        await asyncio.to_thread(cluster.kill, dead)
                        await asyncio.to_thread(cluster.wait_down)
                        before = ssubscribes_refused(alive)
                        assert kill_hub_connections(alive, prefix) == 1
                        started = time.monotonic()
                        response = await client.get(f"/api/v1/jobs/{late}/events")
                        waited = time.monotonic() - started
                        refused = ssubscribes_refused(alive) - before
                        publishers.resume()
                        await asyncio.to_thread(cluster.restart, dead)
                        await asyncio.wait_for(asyncio.gather(*readers), 30)
                    text = (await client.get("/metrics")).text
                    rejoin_refused = ssubscribes_refused(dead)  # since its restart
            _assert_contiguous(feeds, pub, keys)
            # The stream that gave up left no subscription behind.
            assert shard_subscribers(alive, keys.job(late).channel) == 0
            # The new stream waited for a confirmation that could not come: a clear 503.
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "2"
            assert response.json()["error"]["code"] == "not_ready"
            assert 5.0 <= waited < 6.5
            # Both channels on the refusing primary were tried again and again, at most
            # ten times a second each (`ROUTE_PAUSE`), not in a hot loop.
            assert 2 * waited <= refused <= 2 * 10 * waited + 4, (refused, waited)
            messages = [r.getMessage() for r in caplog.records]
            # Refused many times, logged at most once per `REFUSED_LOG_SECONDS`: no flood.
            refusals = [m for m in messages if "(ClusterDownError: The cluster is down)" in m]
            assert 1 <= len(refusals) <= 2, refusals
            assert metric(text, "progress_reroutes_total") >= 2
            report(
                "cluster down",
                ssubscribes_refused=refused,
                waited_s=round(waited, 3),
                refused_by_the_restarted_primary=rejoin_refused,
            )
        finally:
            pub.redis.close()
