"""A worker killed mid-task: the job ends `failure` WorkerLost within 2 x the lease."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis.asyncio

from progress_streamer.protocol.event import EventDraft, ProgressEvent
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.status import JobStatus
from progress_streamer.protocol.sweeper import LeaseSweeper
from progress_streamer.redis_server import RedisServer
from tests.support.celery_worker import Worker, running_worker

pytestmark = [pytest.mark.worker, pytest.mark.slow]

LEASE = 2.0
SLACK = 1.5  # scheduling noise on a busy test machine


@pytest.fixture
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    with running_worker(redis_server.url, lease_seconds=LEASE) as running:
        yield running


@pytest.fixture
async def sweeping(async_redis: redis.asyncio.Redis, worker: Worker) -> AsyncIterator[LeaseSweeper]:
    """The web app's sweeper, running as it does in the app's lifespan."""
    sweeper = LeaseSweeper(async_redis, worker.settings)
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(stop))
    yield sweeper
    stop.set()
    await asyncio.wait_for(task, timeout=10)


async def wait_event(
    worker: Worker, job: str, predicate: Callable[[ProgressEvent], bool], within: float
) -> ProgressEvent:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = next((e for e in worker.events(job) if predicate(e)), None)
        if found is not None:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out: {worker.statuses(job)}\n{worker.log()[-3000:]}")


async def start_slow_task(worker: Worker) -> tuple[str, int]:
    job = uuid.uuid4().hex
    worker.runner.enqueue(job, "tests.slow", {"seconds": 60})
    first = await wait_event(worker, job, lambda e: (e.message or "").startswith("pid "), 15)
    assert worker.redis.zscore(worker.keyspace.leases, job) is not None  # leased
    return job, int((first.message or "").split()[1])


def assert_worker_lost(worker: Worker, job: str, end: ProgressEvent) -> None:
    assert end.error is not None and end.error.type == "WorkerLost"
    statuses = worker.statuses(job)
    assert statuses[:2] == ["pending", "started"]
    assert statuses.count("failure") == 1 and statuses[-1] == "failure"
    # WorkerLost is final: a re-delivery's `started` is refused.
    refused = Publisher(worker.redis, worker.settings).publish(
        EventDraft(job_id=job, status=JobStatus.STARTED)
    )
    assert (refused.accepted, refused.reason) == (False, "terminal")


async def test_sigkill_of_the_pool_child_ends_the_job_worker_lost(
    worker: Worker, sweeping: LeaseSweeper
) -> None:
    job, pid = await start_slow_task(worker)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    end = await wait_event(worker, job, lambda e: e.is_terminal, 2 * LEASE + SLACK)
    assert time.monotonic() - killed < 2 * LEASE + SLACK
    assert_worker_lost(worker, job, end)


async def test_sigkill_of_the_whole_worker_ends_the_job_worker_lost(
    worker: Worker, sweeping: LeaseSweeper
) -> None:
    job, _ = await start_slow_task(worker)
    await wait_event(worker, job, lambda e: (e.percent or 0) > 0, 10)
    killed = time.monotonic()
    worker.kill()
    end = await wait_event(worker, job, lambda e: e.is_terminal, 2 * LEASE + SLACK)
    assert time.monotonic() - killed < 2 * LEASE + SLACK
    assert_worker_lost(worker, job, end)
    assert end.error is not None
    assert end.error.message == "the worker running this job stopped responding"
    for _ in range(250):  # the sweeper un-indexes the job just after publishing
        if worker.redis.zscore(worker.keyspace.leases, job) is None:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the job stayed in the lease index")
