"""ARQ jobs stream through a real `arq` worker process: lifecycle, progress, failure, abort."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job

from progress_streamer.arq.runner import ArqRunner, publish_pending
from progress_streamer.arq.worker_settings import queue_name_of
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer
from tests.support.arq_worker import (
    ArqWorker,
    history,
    run_worker,
    wait_for_arq_result,
    wait_for_status,
    worker_settings,
)

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def arq_settings(redis_server: RedisServer) -> Settings:
    return worker_settings(redis_server)


@pytest.fixture(scope="module")
def arq_worker(arq_settings: Settings) -> Iterator[ArqWorker]:
    yield from run_worker(arq_settings, "tests.support.arq_jobs.WorkerSettings")


@pytest.fixture
async def runner(arq_settings: Settings, arq_worker: ArqWorker) -> AsyncIterator[ArqRunner]:
    runner = ArqRunner(arq_settings)
    yield runner
    await runner.aclose()


async def run(runner: ArqRunner, task: str, **params: object) -> str:
    job_id = uuid.uuid4().hex
    await runner.aenqueue(job_id, task, params)
    return job_id


async def test_a_job_without_progress_code_streams_its_whole_lifecycle(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    job_id = await run(runner, "echo", value=[1, 2])
    end = await wait_for_status(async_redis, arq_settings, job_id)
    events = await history(async_redis, arq_settings, job_id)
    assert [e.status for e in events] == [JobStatus.PENDING, JobStatus.STARTED, JobStatus.SUCCESS]
    assert [e.seq for e in events] == [1, 2, 3]
    assert end.attempt == 1
    assert end.result == {"echo": [1, 2], "ratio": 1.0, "rows": []}
    assert b'"result":{"echo":[1,2],"ratio":1.0,"rows":[]}' in end.raw


async def test_progress_through_the_ctx_helper_is_throttled_and_flushed(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    job_id = await run(runner, "with_progress_job", total=2000)
    end = await wait_for_status(async_redis, arq_settings, job_id)
    events = await history(async_redis, arq_settings, job_id)
    progress = [e for e in events if e.status == JobStatus.PROGRESS]
    assert end.status == JobStatus.SUCCESS and end.result == "counted"
    assert 2 <= len(progress) < 200  # 2000 reports, coalesced
    assert (progress[0].step, progress[0].current, progress[0].total) == ("counting", 1, 2000)
    assert (progress[-1].step, progress[-1].message) == ("done", "counted")
    percents = [e.percent or 0.0 for e in progress]
    assert percents == sorted(percents)


async def test_track_counts_a_loop_through_ctx(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    job_id = await run(runner, "tracked_job", n=200_000)
    end = await wait_for_status(async_redis, arq_settings, job_id)
    progress = [e for e in await history(async_redis, arq_settings, job_id) if e.current]
    assert end.status == JobStatus.SUCCESS and end.result == 200_000
    assert progress[-1].current == progress[-1].total == 200_000
    assert progress[-1].percent == 100.0 and progress[-1].step == "counting"


async def test_a_tqdm_bar_in_a_job_streams_its_count(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    job_id = await run(runner, "tqdm_job", n=5000)
    end = await wait_for_status(async_redis, arq_settings, job_id)
    counted = [e for e in await history(async_redis, arq_settings, job_id) if e.current]
    assert end.status == JobStatus.SUCCESS and end.result == 5000
    assert counted[-1].current == counted[-1].total == 5000
    assert counted[-1].step == "crunching"


async def test_a_failure_carries_the_exception_without_a_traceback(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    job_id = await run(runner, "broken")
    end = await wait_for_status(async_redis, arq_settings, job_id)
    assert end.status == JobStatus.FAILURE
    assert end.error is not None and end.error.as_dict() == {
        "type": "ValueError",
        "message": "broken on purpose",
    }
    assert b"Traceback" not in end.raw and b".py" not in end.raw


@pytest.mark.parametrize(
    ("task", "error_type"),
    [("not_json", "ResultNotSerializable"), ("too_large", "ResultTooLarge")],
)
async def test_a_result_the_event_cannot_carry_ends_the_job_failed(
    runner: ArqRunner,
    async_redis: redis.asyncio.Redis,
    arq_settings: Settings,
    task: str,
    error_type: str,
) -> None:
    job_id = await run(runner, task)
    end = await wait_for_status(async_redis, arq_settings, job_id)
    assert end.status == JobStatus.FAILURE
    assert end.error is not None and end.error.type == error_type


async def test_arq_timeout_is_a_failure_not_a_revocation(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    job_id = await run(runner, "sleeper_with_timeout", seconds=30)
    end = await wait_for_status(async_redis, arq_settings, job_id)
    assert end.status == JobStatus.FAILURE
    assert end.error is not None and end.error.type == "TimeoutError"


async def test_cancel_publishes_revoked_first_then_aborts_the_running_job(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    job_id = await run(runner, "sleeper", seconds=30)
    await wait_for_status(async_redis, arq_settings, job_id, {JobStatus.PROGRESS})
    outcome = await runner.acancel(job_id)
    assert outcome.accepted
    await wait_for_arq_result(async_redis, job_id)  # the worker really cancelled it
    statuses = [e.status for e in await history(async_redis, arq_settings, job_id)]
    assert statuses == [JobStatus.PENDING, JobStatus.STARTED, JobStatus.PROGRESS, JobStatus.REVOKED]
    again = await runner.acancel(job_id)
    assert (again.accepted, again.reason) == (False, "terminal")


async def test_an_abort_outside_our_cancel_still_ends_revoked(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    job_id = await run(runner, "sleeper", seconds=30)
    await wait_for_status(async_redis, arq_settings, job_id, {JobStatus.PROGRESS})
    pool = await arq_pool(arq_settings)
    try:
        assert await Job(job_id, pool, _queue_name=queue_name_of(arq_settings)).abort(timeout=15)
    finally:
        await pool.aclose()
    end = await wait_for_status(async_redis, arq_settings, job_id)
    assert end.status == JobStatus.REVOKED


async def test_cancel_of_a_queued_job_keeps_it_from_ever_running(
    arq_settings: Settings, async_redis: redis.asyncio.Redis
) -> None:
    # A queue no worker reads: the job waits there until a worker would pick it up.
    idle = ArqRunner(arq_settings, queue_name=f"{arq_settings.key_prefix}:idle")
    try:
        job_id = uuid.uuid4().hex
        await idle.aenqueue(job_id, "echo", {"value": 1})
        assert (await idle.acancel(job_id)).accepted
    finally:
        await idle.aclose()
    statuses = [e.status for e in await history(async_redis, arq_settings, job_id)]
    assert statuses == [JobStatus.PENDING, JobStatus.REVOKED]


async def test_a_retried_job_starts_again_with_a_larger_attempt(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    job_id = await run(runner, "retry_once")
    end = await wait_for_status(async_redis, arq_settings, job_id)
    events = await history(async_redis, arq_settings, job_id)
    started = [e.attempt for e in events if e.status == JobStatus.STARTED]
    assert started == [1, 2]
    assert (end.status, end.result, end.attempt) == (JobStatus.SUCCESS, 2, 2)
    assert [e.status for e in events].count(JobStatus.PENDING) == 1


async def test_user_hooks_still_run_and_own_enqueues_stream_with_the_one_liner(
    arq_settings: Settings, arq_worker: ArqWorker, async_redis: redis.asyncio.Redis
) -> None:
    pool = await arq_pool(arq_settings)
    try:
        job_id = uuid.uuid4().hex
        await publish_pending(pool, job_id, arq_settings)
        await pool.enqueue_job("saw_user_hook", _job_id=job_id)
        end = await wait_for_status(async_redis, arq_settings, job_id)
    finally:
        await pool.aclose()
    assert (end.status, end.result) == (JobStatus.SUCCESS, True)
    events = await history(async_redis, arq_settings, job_id)
    assert events[0].status == JobStatus.PENDING


async def arq_pool(settings: Settings) -> ArqRedis:
    return await create_pool(
        RedisSettings.from_dsn(settings.redis_url), default_queue_name=queue_name_of(settings)
    )


async def test_a_job_arq_fails_before_running_it_ends_instead_of_staying_pending(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    """No ARQ hook sees a job whose function the worker lacks: the web side settles it."""
    job_id = await run(runner, "not_registered_anywhere")
    await wait_for_arq_result(async_redis, job_id)
    assert await runner.settle_pending(older_than=0) == [job_id]
    events = await history(async_redis, arq_settings, job_id)
    assert [e.status for e in events] == [JobStatus.PENDING, JobStatus.FAILURE]
    error = events[-1].error
    assert error is not None and error.type == "JobExecutionFailed"
    assert "not_registered_anywhere" in error.message
    assert await runner.settle_pending(older_than=0) == []  # forgotten once settled


async def test_settling_leaves_queued_jobs_alone_and_forgets_started_ones(
    runner: ArqRunner, async_redis: redis.asyncio.Redis, arq_settings: Settings
) -> None:
    idle = ArqRunner(arq_settings, queue_name=f"{arq_settings.key_prefix}:idle")
    try:
        queued = uuid.uuid4().hex  # on a queue no worker reads
        await idle.aenqueue(queued, "echo", {"value": 1})
        done = await run(runner, "echo", value=2)
        await wait_for_status(async_redis, arq_settings, done)
        for each in (runner, idle):
            assert await each.settle_pending(older_than=0) == []
        assert await async_redis.zscore(runner.pending_index, done) is None  # started
        assert await async_redis.zscore(idle.pending_index, queued) is not None  # waits
        statuses = [e.status for e in await history(async_redis, arq_settings, queued)]
        assert statuses == [JobStatus.PENDING]
        assert (await idle.acancel(queued)).accepted
        assert await idle.settle_pending(older_than=0) == []
        assert await async_redis.zscore(idle.pending_index, queued) is None
    finally:
        await idle.aclose()
