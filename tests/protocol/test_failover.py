"""Publishing across a real failover: a primary killed (its replica takes over) or
restarted, while a job publishes. The publish waits it out and is counted once."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from progress_streamer.protocol.connections import async_client, sync_client
from progress_streamer.protocol.event import EventDraft, decode_event
from progress_streamer.protocol.failover import through_failover
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import AsyncPublisher, Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer
from tests.support.redis_cluster import RedisCluster, cluster_unavailable

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def cluster_with_replicas() -> Iterator[RedisCluster]:
    if (why := cluster_unavailable()) is not None:
        pytest.skip(why)
    with RedisCluster(primaries=3, replicas=1) as cluster:
        yield cluster


def settings_on(cluster: RedisCluster, redis_server: RedisServer) -> Settings:
    return Settings(
        redis_url=cluster.url,
        key_prefix=f"f{uuid.uuid4().hex[:8]}",
        celery_broker_url=redis_server.url,
        arq_redis_url=redis_server.url,
    )


def seqs(client: redis.RedisCluster, keyspace: KeySpace, job: str) -> list[int]:
    raw = client.lrange(keyspace.job(job).history, 0, -1)
    return [decode_event(e).seq for e in raw]  # type: ignore[union-attr]


def waited_out_a_failover(caplog: pytest.LogCaptureFixture) -> bool:
    return any("Redis Cluster unavailable" in r.getMessage() for r in caplog.records)


def test_a_publish_during_a_primary_s_death_lands_once_on_its_replica(
    cluster_with_replicas: RedisCluster, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="progress_streamer.protocol.failover")
    cluster = cluster_with_replicas
    settings = settings_on(cluster, redis_server)
    publisher = Publisher(sync_client(settings, max_connections=4), settings)
    keyspace = KeySpace(settings.key_prefix)
    job = uuid.uuid4().hex
    publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    publisher.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=10))
    cluster.wait_replicated()
    primary = cluster.owner_of_key(keyspace.job(job).state)
    (replica,) = cluster.replicas_of(primary)
    cluster.kill(primary)
    # Published while the slot has no live primary: it waits for the replica's takeover.
    outcome = publisher.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
    assert outcome.accepted and outcome.seq == 3
    assert cluster.owner_of_key(keyspace.job(job).state) is replica
    assert seqs(publisher.redis, keyspace, job) == [1, 2, 3]  # type: ignore[arg-type]
    assert waited_out_a_failover(caplog)
    publisher.redis.close()


def test_publishers_ride_out_a_primary_restart_with_every_seq_once(
    cluster_with_replicas: RedisCluster, redis_server: RedisServer
) -> None:
    """Four publishers on one job, publishing without pause while its primary is stopped
    and started again (AOF on, so nothing acknowledged is lost), and for a while after it
    is back: no publish fails, no seq is missing or doubled."""
    cluster = cluster_with_replicas
    settings = settings_on(cluster, redis_server)
    keyspace = KeySpace(settings.key_prefix)
    job = uuid.uuid4().hex
    first = Publisher(sync_client(settings, max_connections=4), settings)
    first.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    primary = cluster.owner_of_key(keyspace.job(job).state)
    accepted: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    after_restart = threading.Semaphore(0)  # one release per publish once it is back
    publishing = threading.Semaphore(0)  # one release per publish before that
    restarted = threading.Event()

    def run(publisher: Publisher) -> None:
        try:
            while not stop.is_set():
                draft = EventDraft(job_id=job, status=JobStatus.PROGRESS, message="x")
                outcome = publisher.publish(draft)
                assert outcome.accepted, outcome
                accepted.append(outcome.seq)
                (after_restart if restarted.is_set() else publishing).release()
        except BaseException as exc:
            failures.append(exc)
        finally:
            publisher.redis.close()

    # Built (each checks the cluster's versions) while every primary is up.
    publishers = [Publisher(sync_client(settings, max_connections=2), settings) for _ in range(4)]
    threads = [threading.Thread(target=run, args=(p,)) for p in publishers]
    for thread in threads:
        thread.start()
    for _ in range(4):  # publishing before the primary stops
        assert publishing.acquire(timeout=30), failures
    cluster.terminate(primary)  # a clean stop: the replica may take over, or it returns
    cluster.restart(primary, wait=False)
    cluster.wait_ok()
    restarted.set()
    for _ in range(40):  # the publishers go on on the cluster as it is now
        assert after_restart.acquire(timeout=30), failures
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert sorted(accepted) == list(range(2, len(accepted) + 2))
    final = through_failover(lambda: seqs(first.redis, keyspace, job))  # type: ignore[arg-type]
    assert final == list(range(1, len(accepted) + 2))[-settings.history :]  # the retained tail
    first.redis.close()


def test_a_publish_after_a_manual_failover_runs_on_the_promoted_replica(
    cluster_with_replicas: RedisCluster, redis_server: RedisServer
) -> None:
    """A promoted replica starts with no scripts, and redis-py's cluster client reloads a
    script on the primaries of its stale map only: the publish still runs there."""
    cluster = cluster_with_replicas
    settings = settings_on(cluster, redis_server)
    publisher = Publisher(sync_client(settings, max_connections=4), settings)
    keyspace = KeySpace(settings.key_prefix)
    job = uuid.uuid4().hex
    publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    primary = cluster.owner_of_key(keyspace.job(job).state)
    (replica,) = cluster.replicas_of(primary)
    cluster.failover(replica)
    outcome = publisher.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=5))
    assert outcome.accepted and outcome.seq == 2
    assert publisher.touch_lease(job, attempt=1) is not None
    assert seqs(publisher.redis, keyspace, job) == [1, 2]  # type: ignore[arg-type]
    publisher.redis.close()


async def test_an_async_publish_after_a_manual_failover_runs_on_the_promoted_replica(
    cluster_with_replicas: RedisCluster, redis_server: RedisServer
) -> None:
    cluster = cluster_with_replicas
    settings = settings_on(cluster, redis_server)
    publisher = AsyncPublisher(async_client(settings, max_connections=4), settings)
    keyspace = KeySpace(settings.key_prefix)
    job = uuid.uuid4().hex
    await publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    primary = cluster.owner_of_key(keyspace.job(job).state)
    (replica,) = cluster.replicas_of(primary)
    await asyncio.to_thread(cluster.failover, replica)
    outcome = await publisher.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS))
    assert outcome.accepted and outcome.seq == 2
    assert await publisher.touch_lease(job, attempt=1) is not None
    await publisher.redis.aclose()
