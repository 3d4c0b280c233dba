"""The lease sweeper and the heartbeat, against a real redis-server (no Celery)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
import redis
import redis.asyncio

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.history import SyncJobReader
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.lease import LeaseHeartbeat
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.protocol.sweeper import LeaseSweeper
from progress_streamer.redis_server import free_port

# Each test runs on one Redis and again on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.both_redis_modes


def new_job() -> str:
    return uuid.uuid4().hex


def start(publisher: Publisher, job: str, lease: float) -> None:
    publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED), lease_seconds=lease)
    publisher.redis.zadd(publisher.keyspace.leases, {job: 0 if lease < 0 else 4e9})


@pytest.fixture
def lease_settings(settings: Settings) -> Settings:
    return settings.replace(lease_seconds=1.0)


async def test_an_expired_lease_fails_the_job_worker_lost_once(
    sync_redis: redis.Redis,
    async_redis: redis.asyncio.Redis,
    lease_settings: Settings,
    keyspace: KeySpace,
) -> None:
    publisher = Publisher(sync_redis, lease_settings)
    job = new_job()
    start(publisher, job, lease=-1)  # the worker's lease is already over
    sweeper = LeaseSweeper(async_redis, lease_settings)

    assert await sweeper.sweep_once() == [job]
    assert await sweeper.sweep_once() == []

    snapshot = SyncJobReader(sync_redis).snapshot(keyspace.job(job))
    assert snapshot is not None and snapshot.status == "failure" and snapshot.error is not None
    assert (snapshot.error.type, snapshot.seq) == ("WorkerLost", 2)
    assert await async_redis.zscore(keyspace.leases, job) is None


async def test_an_active_lease_is_left_alone_and_its_stale_index_fixed(
    sync_redis: redis.Redis,
    async_redis: redis.asyncio.Redis,
    lease_settings: Settings,
    keyspace: KeySpace,
) -> None:
    publisher = Publisher(sync_redis, lease_settings)
    job = new_job()
    publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED), lease_seconds=30)
    sync_redis.zadd(keyspace.leases, {job: 1.0})  # the index says long expired

    assert await LeaseSweeper(async_redis, lease_settings).sweep_once() == []

    lease = float(sync_redis.hget(keyspace.job(job).state, "lease"))  # type: ignore[arg-type]
    assert await async_redis.zscore(keyspace.leases, job) == pytest.approx(lease)
    assert sync_redis.hget(keyspace.job(job).state, "status") == b"started"


async def test_finished_gone_and_invalid_members_leave_the_index(
    sync_redis: redis.Redis,
    async_redis: redis.asyncio.Redis,
    lease_settings: Settings,
    keyspace: KeySpace,
) -> None:
    publisher = Publisher(sync_redis, lease_settings)
    done, gone = new_job(), new_job()
    start(publisher, done, lease=-1)
    publisher.publish(EventDraft(job_id=done, status=JobStatus.SUCCESS))
    sync_redis.zadd(keyspace.leases, {done: 1.0, gone: 1.0, "not a job id!": 1.0})

    assert await LeaseSweeper(async_redis, lease_settings).sweep_once() == []

    assert await async_redis.zcard(keyspace.leases) == 0
    assert not await async_redis.exists(keyspace.job(gone).state)
    assert sync_redis.hget(keyspace.job(done).state, "status") == b"success"


async def test_a_heartbeat_keeps_the_sweeper_away_until_it_stops(
    sync_redis: redis.Redis,
    async_redis: redis.asyncio.Redis,
    lease_settings: Settings,
    keyspace: KeySpace,
) -> None:
    publisher = Publisher(sync_redis, lease_settings)
    job = new_job()
    outcome = publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED), lease_seconds=1)
    heartbeat = LeaseHeartbeat(publisher, job, outcome.attempt).start()
    stop = asyncio.Event()
    run = asyncio.create_task(LeaseSweeper(async_redis, lease_settings).run(stop))
    try:
        first = await async_redis.zscore(keyspace.leases, job)
        assert first is not None
        for _ in range(200):  # bounded: the heartbeat moves the deadline within ~1/3 s
            if (await async_redis.zscore(keyspace.leases, job) or 0) > first:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the heartbeat never extended the lease")
        assert sync_redis.hget(keyspace.job(job).state, "status") == b"started"

        heartbeat.stop()  # the worker dies
        stopped = asyncio.get_running_loop().time()
        while sync_redis.hget(keyspace.job(job).state, "status") != b"failure":
            assert asyncio.get_running_loop().time() - stopped < 2 * 1.0 + 1.0
            await asyncio.sleep(0.02)
    finally:
        heartbeat.stop()
        stop.set()
        await asyncio.wait_for(run, timeout=5)


def test_a_heartbeat_stops_by_itself_once_the_job_is_over(
    sync_redis: redis.Redis, lease_settings: Settings, keyspace: KeySpace
) -> None:
    publisher = Publisher(sync_redis, lease_settings)
    job = new_job()
    publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    publisher.publish(EventDraft(job_id=job, status=JobStatus.REVOKED))
    heartbeat = LeaseHeartbeat(publisher, job, 1, interval=0.01).start()
    assert heartbeat._thread is None  # the first touch saw the job was over
    assert sync_redis.zscore(keyspace.leases, job) is None


async def test_run_survives_redis_errors_and_stops_when_asked(
    lease_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.asyncio.Redis(port=free_port(), socket_connect_timeout=0.2)
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="progress_streamer.protocol.sweeper"):
        run = asyncio.create_task(LeaseSweeper(client, lease_settings).run(stop))
        for _ in range(250):
            if any("lease sweep failed" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
        assert not run.done()
        stop.set()
        await asyncio.wait_for(run, timeout=5)
    await client.aclose()
    assert any("lease sweep failed" in r.getMessage() for r in caplog.records)


async def test_a_job_key_of_the_wrong_type_does_not_stop_the_sweeper(
    sync_redis: redis.Redis,
    async_redis: redis.asyncio.Redis,
    lease_settings: Settings,
    keyspace: KeySpace,
) -> None:
    """Issue 14, item 10: a job whose state key was of the wrong type made every sweep
    raise on it, first in the index, so no other job was ever failed `WorkerLost`."""
    publisher = Publisher(sync_redis, lease_settings)
    bad, job = new_job(), new_job()
    sync_redis.set(keyspace.job(bad).state, b"a string, not a hash")
    sync_redis.zadd(keyspace.leases, {bad: 0})
    start(publisher, job, lease=-1)
    sweeper = LeaseSweeper(async_redis, lease_settings)
    assert await sweeper.sweep_once() == [job]
    assert await async_redis.zscore(keyspace.leases, bad) is None  # dropped from the index
