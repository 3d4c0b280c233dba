"""A killed ARQ worker's job ends `failure`/`WorkerLost` in time, and stays ended."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from arq.jobs import Job

from progress_streamer.arq.run import JobAlreadyFinished, JobRun
from progress_streamer.arq.runner import ArqRunner
from progress_streamer.protocol.history import JobReader
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import AsyncPublisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.protocol.sweeper import LeaseSweeper
from progress_streamer.redis_server import RedisServer
from tests.support.arq_worker import (
    LEASE_SECONDS,
    ArqWorker,
    history,
    wait_for_arq_result,
    wait_for_status,
    worker_settings,
)

pytestmark = pytest.mark.worker


@pytest.fixture
def lease_settings(redis_server: RedisServer) -> Settings:
    return worker_settings(redis_server)


@pytest.fixture
async def runner(lease_settings: Settings) -> AsyncIterator[ArqRunner]:
    runner = ArqRunner(lease_settings)
    yield runner
    await runner.aclose()


async def sweep_until_terminal(
    sweeper: LeaseSweeper, client: redis.asyncio.Redis, settings: Settings, job_id: str
) -> float:
    """What the web app's sweeper loop does, until the job has ended; returns when."""
    deadline = time.monotonic() + 4 * LEASE_SECONDS + 10
    while time.monotonic() < deadline:
        if job_id in await sweeper.sweep_once():
            return time.monotonic()
        await asyncio.sleep(0.05)  # polling, as the sweeper's own loop does
    pytest.fail("the sweeper never ended the job")


async def test_a_killed_worker_ends_its_job_worker_lost_and_a_rerun_is_refused(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, lease_settings: Settings
) -> None:
    worker = ArqWorker(lease_settings, "tests.support.arq_jobs.WorkerSettings").start()
    try:
        job_id = uuid.uuid4().hex
        await runner.aenqueue(job_id, "sleeper", {"seconds": 60})
        await wait_for_status(async_redis, lease_settings, job_id, {JobStatus.PROGRESS})
        worker.kill()
        killed_at = time.monotonic()
    finally:
        worker.stop()
    sweeper = LeaseSweeper(async_redis, lease_settings)
    ended_at = await sweep_until_terminal(sweeper, async_redis, lease_settings, job_id)
    assert ended_at - killed_at < 2 * LEASE_SECONDS + 1.0  # the bound, plus a margin
    lost = await wait_for_status(async_redis, lease_settings, job_id)
    assert lost.error is not None and lost.error.type == "WorkerLost"

    # ARQ runs the job again once its in-progress marker expires (here: at once).
    await async_redis.delete(f"arq:in-progress:{job_id}")
    again = ArqWorker(lease_settings, "tests.support.arq_jobs.WorkerSettings").start()
    try:
        await wait_for_arq_result(async_redis, job_id)
    finally:
        again.stop()
    rerun = await Job(job_id, async_redis).result_info()
    assert rerun is not None and rerun.job_try == 2
    assert isinstance(rerun.result, JobAlreadyFinished)  # the re-run did not run the job
    events = await history(async_redis, lease_settings, job_id)
    assert events[-1].seq == lost.seq and events[-1].error == lost.error


async def test_a_job_cut_short_by_a_worker_shutdown_runs_again_as_a_new_attempt(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, lease_settings: Settings
) -> None:
    first = ArqWorker(lease_settings, "tests.support.arq_jobs.WorkerSettings").start()
    try:
        job_id = uuid.uuid4().hex
        await runner.aenqueue(job_id, "sleeper", {"seconds": 1.5})
        await wait_for_status(async_redis, lease_settings, job_id, {JobStatus.PROGRESS})
    finally:
        first.stop()  # SIGTERM: ARQ cancels the job and leaves it queued to run again
    second = ArqWorker(lease_settings, "tests.support.arq_jobs.WorkerSettings").start()
    try:
        end = await wait_for_status(async_redis, lease_settings, job_id)
    finally:
        second.stop()
    assert (end.status, end.attempt, end.result) == (JobStatus.SUCCESS, 2, "slept")
    statuses = [e.status for e in await history(async_redis, lease_settings, job_id)]
    assert statuses == [
        JobStatus.PENDING,
        JobStatus.STARTED,
        JobStatus.PROGRESS,
        JobStatus.STARTED,
        JobStatus.PROGRESS,
        JobStatus.SUCCESS,
    ]


async def test_a_run_whose_state_redis_lost_is_refused_and_the_job_ends_state_lost(
    async_redis: redis.asyncio.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    """Issue 14, item 3: each event of a run carries the state it saw; once Redis lost
    it, the run's next event is refused and the job ends `StateLost` in its place."""
    job = uuid.uuid4().hex
    run = JobRun(AsyncPublisher(async_redis, settings), job, 1)
    await run.start()
    await run.progress(step="one", percent=10.0)
    try:
        await async_redis.delete(*keyspace.job(job).all_keys)
        outcome = await run.succeed({"ok": True})
    finally:
        await run.stop()
    assert (outcome.accepted, outcome.reason, outcome.seq) == (False, "state_lost", 3)
    end = await JobReader(async_redis).snapshot(keyspace.job(job))
    assert end is not None and (end.status, end.seq) == (JobStatus.FAILURE, 3)
    assert end.error is not None and end.error.type == "StateLost"
