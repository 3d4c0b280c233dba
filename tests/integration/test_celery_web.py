"""End to end: enqueue `demo.report` through the API, stream it to success, download it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from progress_streamer.protocol.publisher import PublishOutcome
from progress_streamer.redis_server import RedisServer
from progress_streamer.web import JobRunner
from tests.support.celery_worker import Worker, running_worker
from tests.support.server import read_all, running_server

pytestmark = pytest.mark.worker


class Borrowed(JobRunner):
    """The worker fixture's runner, lent to the app (which must not close it)."""

    def __init__(self, worker: Worker) -> None:
        self.runner = worker.runner

    def enqueue(self, job_id: str, task: str, params: dict[str, Any]) -> None:
        self.runner.enqueue(job_id, task, params)

    def cancel(self, job_id: str) -> PublishOutcome:
        return self.runner.cancel(job_id)


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    with running_worker(redis_server.url) as running:
        yield running


async def test_demo_report_streams_to_success_and_downloads(worker: Worker) -> None:
    settings = worker.settings.replace(auth="token", secret="e2e-secret-" + "0123456789" * 3)
    with running_server(settings, {"celery": Borrowed(worker)}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            body = {"task": "demo.report", "params": {"steps": 4, "step_ms": 20}}
            created = (await client.post("/api/v1/jobs", json=body)).json()
            auth = {"Authorization": f"Bearer {created['token']}"}
            stream = await read_all(client, created["events_url"], headers=auth)
            events = [json.loads(e.data) for e in stream.events]
            assert events[-1]["status"] == "success" and events[-1]["result"]
            seqs = [e["seq"] for e in events]
            assert seqs == list(range(seqs[0], seqs[-1] + 1))
            assert any(e["status"] == "progress" for e in events)
            report = await client.get(created["result_url"], headers=auth)
            assert report.status_code == 200
            assert report.headers["content-disposition"].startswith("attachment; filename=")
            assert report.content
