"""Building ARQ worker settings whose jobs stream: `with_progress`, `progress_worker_settings`."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import redis.asyncio
from arq.connections import RedisSettings, create_pool
from arq.worker import Function, Worker, func

from progress_streamer.arq.worker_settings import (
    PUBLISHER,
    progress_worker_settings,
    queue_name_of,
    with_progress,
)
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from tests.support.arq_worker import history

calls: list[str] = []


async def job(ctx: dict[Any, Any], x: int) -> int:
    await ctx["progress"](percent=50.0)
    await ctx["attach_file"]("a.txt", b"a", "text/plain")
    return x * 2


async def user_startup(ctx: dict[Any, Any]) -> None:
    calls.append("startup" if PUBLISHER in ctx else "startup before the publisher")


async def user_shutdown(ctx: dict[Any, Any]) -> None:
    calls.append("shutdown" if PUBLISHER in ctx else "shutdown after the publisher closed")


def test_the_decorator_rewrites_a_settings_class_in_place(settings: Settings) -> None:
    @with_progress
    class WorkerSettings:
        functions: ClassVar[list[Any]] = [job, func(job, name="named", timeout=5)]
        on_startup = user_startup

    assert vars(WorkerSettings)["allow_abort_jobs"] is True
    names = [f.name for f in WorkerSettings.functions]
    assert names == ["job", "named"]
    assert all(isinstance(f, Function) for f in WorkerSettings.functions)
    assert WorkerSettings.on_startup is not user_startup
    assert "on_job_start" in vars(WorkerSettings)  # ARQ reads the class's own __dict__


def test_explicit_choices_are_kept_and_wrapping_twice_changes_nothing(settings: Settings) -> None:
    once = with_progress({"functions": [job], "allow_abort_jobs": False}, settings=settings)
    twice = with_progress(once, settings=settings)
    assert once["allow_abort_jobs"] is False
    assert twice is once
    again = with_progress({"functions": once["functions"]}, settings=settings)
    assert again["functions"][0].coroutine is once["functions"][0].coroutine


def test_the_settings_builder_uses_the_redis_and_queue_of_the_settings(
    settings: Settings,
) -> None:
    built = progress_worker_settings([job], settings=settings, max_jobs=3)
    assert built["redis_settings"] == RedisSettings.from_dsn(settings.redis_url)
    assert built["queue_name"] == queue_name_of(settings) == f"{settings.key_prefix}:arq:queue"
    assert built["max_jobs"] == 3


# ARQ 0.28's `Worker.close` calls redis-py's deprecated `close()`.
@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")
async def test_an_in_process_worker_streams_and_runs_user_hooks_in_order(
    settings: Settings, async_redis: redis.asyncio.Redis
) -> None:
    calls.clear()
    built = progress_worker_settings(
        [job], settings=settings, on_startup=user_startup, on_shutdown=user_shutdown
    )
    worker = Worker(**built, burst=True, handle_signals=False, poll_delay=0.01)
    pool = await create_pool(built["redis_settings"], default_queue_name=built["queue_name"])
    try:
        await pool.enqueue_job("job", 21, _job_id="tracked-1")
        await pool.enqueue_job("job", 1, _job_id="cron:not-a-job-id")  # runs, untracked
        await worker.async_run()
        results = {r.job_id: r.result for r in await pool.all_job_results()}
    finally:
        await worker.close()
        await pool.aclose()
    assert results["tracked-1"] == 42 and results["cron:not-a-job-id"] == 2
    events = await history(async_redis, settings, "tracked-1")
    assert [e.status for e in events] == [JobStatus.STARTED, JobStatus.PROGRESS, JobStatus.SUCCESS]
    assert calls == ["startup", "shutdown"]
