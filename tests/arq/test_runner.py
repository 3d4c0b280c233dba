"""ARQ jobs through the HTTP API and the SSE stream, exactly as Celery's: a real uvicorn,
the real `ArqRunner` and the project's real ARQ worker process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from progress_streamer.arq.runner import ArqRunner
from progress_streamer.protocol.settings import Settings
from progress_streamer.redis_server import RedisServer
from progress_streamer.web.catalog import TaskSpec, default_catalog
from tests.support.arq_worker import LEASE_SECONDS, ArqWorker, run_worker, worker_settings
from tests.support.server import ServerThread, read_all, running_server

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def http_settings(redis_server: RedisServer) -> Settings:
    return worker_settings(redis_server)


@pytest.fixture(scope="module")
def demo_worker(http_settings: Settings) -> Iterator[ArqWorker]:
    yield from run_worker(http_settings, "workers.arq_worker.WorkerSettings")


@pytest.fixture
def server(http_settings: Settings, demo_worker: ArqWorker) -> Iterator[ServerThread]:
    with running_server(http_settings, {"arq": ArqRunner(http_settings)}) as server:
        yield server


async def test_a_demo_report_on_arq_streams_and_downloads(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        body = {"task": "demo.report", "params": {"steps": 3, "step_ms": 10}, "runner": "arq"}
        created = await client.post("/api/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        job = created.json()
        stream = await read_all(client, job["events_url"])
        events = [json.loads(e.data) for e in stream.events]
        assert events[-1]["status"] == "success" and stream.ended
        assert [int(e.id or 0) for e in stream.events] == [e["seq"] for e in events]
        status = (await client.get(job["status_url"])).json()
        assert (status["status"], status["result"]["filename"]) == (
            "success",
            f"report-{job['job_id']}.csv",
        )
        result = await client.get(job["result_url"])
        assert result.status_code == 200
        assert result.headers["content-type"].startswith("text/csv")
        assert f"report-{job['job_id']}.csv" in result.headers["content-disposition"]
        assert result.content.startswith(b"page,region,units,revenue")


async def test_delete_revokes_a_running_arq_job_once(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        body = {"task": "demo.report", "params": {"steps": 1000, "step_ms": 50}, "runner": "arq"}
        job = (await client.post("/api/v1/jobs", json=body)).json()
        async with client.stream("GET", job["events_url"]) as response:
            async for line in response.aiter_lines():
                if '"status":"progress"' in line:
                    break
        cancelled = await client.delete(job["status_url"])
        assert cancelled.status_code == 202, cancelled.text
        again = await client.delete(job["status_url"])
        assert again.status_code == 409
        stream = await read_all(client, job["events_url"], last_event_id="0")
        statuses = [json.loads(e.data)["status"] for e in stream.events]
        assert statuses.count("revoked") == 1 and statuses[-1] == "revoked"


async def test_status_falls_back_to_arq_for_jobs_we_never_saw(
    http_settings: Settings, server: ServerThread
) -> None:
    """404 only when neither we nor ARQ know the job (ARQ jobs enqueued without pending)."""
    from arq.connections import RedisSettings, create_pool

    from progress_streamer.arq.worker_settings import queue_name_of

    pool = await create_pool(RedisSettings.from_dsn(http_settings.redis_url))
    try:
        queued = await pool.enqueue_job(
            "demo.report", _job_id="foreignjob1", _queue_name=queue_name_of(http_settings) + "x"
        )
        assert queued is not None
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            unknown = await client.get("/api/v1/jobs/neverheardof")
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "not_found"
            # Queued on another queue name, so ARQ reports it not found from ours: 404.
            other = await client.get("/api/v1/jobs/foreignjob1")
            assert other.status_code == 404
        queued = await pool.enqueue_job(
            "demo.report",
            _job_id="foreignjob2",
            _queue_name=queue_name_of(http_settings),
            _defer_by=3600,
            steps=1,
        )
        assert queued is not None
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            known = await client.get("/api/v1/jobs/foreignjob2")
            assert known.status_code == 200, known.text
            assert known.json() == {
                "job_id": "foreignjob2",
                "status": "pending",
                "attempt": 1,
                "progress": None,
                "result": None,
                "error": None,
                "seq": 0,
            }
    finally:
        await pool.delete("arq:job:foreignjob1", "arq:job:foreignjob2")
        await pool.zrem(queue_name_of(http_settings), "foreignjob2")
        await pool.zrem(queue_name_of(http_settings) + "x", "foreignjob1")
        await pool.aclose()


async def test_a_job_the_arq_worker_cannot_run_ends_its_stream_failed(
    http_settings: Settings, demo_worker: ArqWorker
) -> None:
    """The worker has no such function, so no hook of ours runs there: the web process's
    settler ends the job (within about 1.5 leases of its enqueue) instead of a spinner."""
    catalog = default_catalog().with_tasks(
        [TaskSpec(name="ghost.task", runners=frozenset({"arq"}))]
    )
    runners = {"arq": ArqRunner(http_settings)}
    with running_server(http_settings, runners, catalog=catalog) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            body = {"task": "ghost.task", "runner": "arq"}
            created = await client.post("/api/v1/jobs", json=body)
            assert created.status_code == 202, created.text
            async with asyncio.timeout(5 * LEASE_SECONDS):  # the bound, with a margin
                stream = await read_all(client, created.json()["events_url"])
    events = [json.loads(e.data) for e in stream.events]
    assert [e["status"] for e in events] == ["pending", "failure"] and stream.ended
    assert events[-1]["error"]["type"] == "JobExecutionFailed"
    assert "ghost.task" in events[-1]["error"]["message"]
