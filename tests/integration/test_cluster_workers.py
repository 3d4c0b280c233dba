"""Cluster mode end to end: progress state on a Redis Cluster, the Celery broker and the
ARQ queue on the session's plain Redis (neither kombu nor arq supports a cluster). A real
Celery worker and a real ARQ worker run the demo job; the API streams it to success."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from progress_streamer.arq.runner import ArqRunner
from progress_streamer.protocol.settings import Settings
from progress_streamer.redis_server import RedisServer
from tests.integration.test_celery_web import Borrowed
from tests.support.arq_worker import ArqWorker, run_worker
from tests.support.arq_worker import worker_settings as arq_worker_settings
from tests.support.celery_worker import Worker, running_worker
from tests.support.celery_worker import worker_settings as celery_worker_settings
from tests.support.redis_cluster import RedisCluster
from tests.support.server import read_all, running_server

pytestmark = [pytest.mark.worker, pytest.mark.cluster]


def on_cluster(settings: Settings, cluster: RedisCluster, redis_server: RedisServer) -> Settings:
    return settings.replace(
        redis_url=cluster.url,
        celery_broker_url=redis_server.url,
        arq_redis_url=redis_server.url,
    )


@pytest.fixture(scope="module")
def celery_worker(redis_cluster: RedisCluster, redis_server: RedisServer) -> Iterator[Worker]:
    settings = celery_worker_settings(redis_server.url, lease_seconds=2.0)
    settings = on_cluster(settings, redis_cluster, redis_server)
    with running_worker(settings.redis_url, settings=settings) as running:
        yield running


@pytest.fixture(scope="module")
def arq_worker(redis_cluster: RedisCluster, redis_server: RedisServer) -> Iterator[ArqWorker]:
    settings = on_cluster(arq_worker_settings(redis_server), redis_cluster, redis_server)
    yield from run_worker(settings, "workers.arq_worker.WorkerSettings")


async def stream_demo_to_success(server_url: str, runner: str) -> dict[str, Any]:
    """POST the demo job, read its stream to the end, then ask the status endpoint."""
    async with httpx.AsyncClient(base_url=server_url, timeout=30) as client:
        body = {"task": "demo.report", "runner": runner, "params": {"steps": 4, "step_ms": 20}}
        created = await client.post("/api/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        urls = created.json()
        stream = await read_all(client, urls["events_url"])
        events = [json.loads(e.data) for e in stream.events]
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
        assert events[-1]["status"] == "success", events[-1]
        assert any(e["status"] == "progress" for e in events)
        status = await client.get(urls["status_url"])
        assert status.status_code == 200
        report = await client.get(urls["result_url"])
        assert report.status_code == 200 and report.content.startswith(b"page,region")
        answer: dict[str, Any] = status.json()
        return answer


async def test_a_celery_job_with_state_on_the_cluster_streams_to_success(
    celery_worker: Worker,
) -> None:
    with running_server(celery_worker.settings, {"celery": Borrowed(celery_worker)}) as server:
        status = await stream_demo_to_success(server.url, "celery")
    assert status["status"] == "success" and status["result"]["rows"] == 4


async def test_an_arq_job_with_state_on_the_cluster_streams_to_success(
    arq_worker: ArqWorker,
) -> None:
    runner = ArqRunner(arq_worker.settings)
    with running_server(arq_worker.settings, {"arq": runner}) as server:
        status = await stream_demo_to_success(server.url, "arq")
    assert status["status"] == "success" and status["result"]["rows"] == 4
