"""The demo tasks on the project's own ARQ worker (`workers.arq_worker.WorkerSettings`),
driven through the synchronous runner interface the web app calls from a thread."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio

from progress_streamer.arq.runner import ArqRunner
from progress_streamer.protocol.files import file_info, read_file
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer
from tests.support.arq_worker import (
    ArqWorker,
    history,
    run_worker,
    wait_for_status,
    worker_settings,
)

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def demo_settings(redis_server: RedisServer) -> Settings:
    return worker_settings(redis_server)


@pytest.fixture(scope="module")
def demo_worker(demo_settings: Settings) -> Iterator[ArqWorker]:
    yield from run_worker(demo_settings, "workers.arq_worker.WorkerSettings")


async def enqueue(settings: Settings, task: str, params: dict[str, object]) -> str:
    job_id = uuid.uuid4().hex
    await asyncio.to_thread(ArqRunner(settings).enqueue, job_id, task, params)
    return job_id


async def test_demo_report_steps_through_and_attaches_its_csv(
    demo_worker: ArqWorker, demo_settings: Settings, async_redis: redis.asyncio.Redis
) -> None:
    job_id = await enqueue(demo_settings, "demo.report", {"steps": 5, "step_ms": 10})
    end = await wait_for_status(async_redis, demo_settings, job_id)
    assert end.status == JobStatus.SUCCESS, end
    filename = f"report-{job_id}.csv"
    assert end.result["filename"] == filename and end.result["rows"] == 5
    events = await history(async_redis, demo_settings, job_id)
    progress = [e for e in events if e.status == JobStatus.PROGRESS]
    assert progress[0].step == "fetching"
    assert {"fetching", "rendering", "saving"} <= {e.step for e in progress}
    assert progress[-1].percent == 100.0
    keyspace = KeySpace(demo_settings.key_prefix)
    stored = await file_info(async_redis, keyspace, job_id)
    assert stored is not None
    assert (stored.name, stored.content_type) == (filename, "text/csv")
    data = await read_file(async_redis, keyspace, job_id)
    assert data is not None and data.startswith(b"page,region,units,revenue\r\n")
    assert len(data) == stored.size == end.result["bytes"]


async def test_demo_fail_fails_clearly_at_its_percent(
    demo_worker: ArqWorker, demo_settings: Settings, async_redis: redis.asyncio.Redis
) -> None:
    job_id = await enqueue(demo_settings, "demo.fail", {"fail_at": 30, "step_ms": 10})
    end = await wait_for_status(async_redis, demo_settings, job_id)
    assert end.status == JobStatus.FAILURE
    assert end.error is not None and end.error.type == "DemoFailure"
    assert "30%" in end.error.message
    events = await history(async_redis, demo_settings, job_id)
    assert [e.percent for e in events if e.status == JobStatus.PROGRESS][-1] == 30.0


async def test_the_sync_cancel_revokes_once_and_then_answers_terminal(
    demo_worker: ArqWorker, demo_settings: Settings, async_redis: redis.asyncio.Redis
) -> None:
    job_id = await enqueue(demo_settings, "demo.report", {"steps": 1000, "step_ms": 100})
    await wait_for_status(async_redis, demo_settings, job_id, {JobStatus.PROGRESS})
    runner = ArqRunner(demo_settings)
    first = await asyncio.to_thread(runner.cancel, job_id)
    second = await asyncio.to_thread(runner.cancel, job_id)
    assert first.accepted and (second.accepted, second.reason) == (False, "terminal")
    statuses = [e.status for e in await history(async_redis, demo_settings, job_id)]
    assert statuses.count(JobStatus.REVOKED) == 1 and statuses[-1] == JobStatus.REVOKED


async def test_a_group_of_10_is_one_parent_job(
    demo_worker: ArqWorker, demo_settings: Settings, async_redis: redis.asyncio.Redis
) -> None:
    from progress_streamer.protocol.runner import ChildJob

    parent = uuid.uuid4().hex
    children = [
        ChildJob(job_id=uuid.uuid4().hex, task="demo.report", params={"steps": 3, "step_ms": 5})
        for _ in range(10)
    ]
    runner = ArqRunner(demo_settings)
    await asyncio.to_thread(runner.enqueue_family, parent, "group", children, False)
    end = await wait_for_status(async_redis, demo_settings, parent)
    assert end.status == JobStatus.SUCCESS, end
    assert end.children is not None and end.children["succeeded"] == 10
    assert [r["filename"] for r in end.result["children"]] == [
        f"report-{c.job_id}.csv" for c in children
    ]
    events = await history(async_redis, demo_settings, parent)
    percents = [e.percent for e in events if e.percent is not None]
    assert percents == sorted(percents)


def test_arq_refuses_chains_and_chords_clearly(demo_settings: Settings) -> None:
    from progress_streamer.protocol.runner import ChildJob, UnsupportedFamily

    child = ChildJob(job_id=uuid.uuid4().hex, task="demo.report", params={})
    for kind in ("chain", "chord"):
        with pytest.raises(UnsupportedFamily, match="groups only"):
            ArqRunner(demo_settings).enqueue_family(uuid.uuid4().hex, kind, [child, child], False)


async def test_a_fail_fast_group_revokes_and_aborts_its_other_children(
    demo_worker: ArqWorker, demo_settings: Settings, async_redis: redis.asyncio.Redis
) -> None:
    from progress_streamer.protocol.runner import ChildJob

    parent = uuid.uuid4().hex
    slow = {"steps": 100, "step_ms": 100}
    children = [ChildJob(job_id=uuid.uuid4().hex, task="demo.report", params=slow)
                for _ in range(3)]  # fmt: skip
    fails = {"fail_at": 20, "step_ms": 50}
    failing = ChildJob(job_id=uuid.uuid4().hex, task="demo.fail", params=fails)
    runner = ArqRunner(demo_settings)
    await asyncio.to_thread(runner.enqueue_family, parent, "group", [failing, *children], True)
    end = await wait_for_status(async_redis, demo_settings, parent)
    assert end.status == JobStatus.FAILURE
    assert end.error is not None and end.error.type == "ChildFailed"
    assert end.children is not None
    assert (end.children["failed"], end.children["revoked"]) == (1, 3)
    for child in children:
        finished = await wait_for_status(async_redis, demo_settings, child.job_id)
        assert finished.status == JobStatus.REVOKED
        statuses = [e.status for e in await history(async_redis, demo_settings, child.job_id)]
        assert statuses.count(JobStatus.REVOKED) == 1
