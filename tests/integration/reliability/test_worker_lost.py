"""A dead worker while browsers watch (issue 6, item 3, the watched variant).

tests/integration/test_celery_worker_lost.py covers nobody watching (the sweeper alone, a refused
re-delivery). Here the web app (whose lifespan runs the sweeper) streams the job to a
single-job stream and a watch stream when the pool child, or the whole worker, is
SIGKILLed: both streams end with `failure`/`WorkerLost` within 2 x the lease, and no
stream, subscription or stream slot stays behind.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from progress_streamer.redis_server import RedisServer
from tests.support.celery_worker import Worker, running_worker
from tests.support.reliability import report, until
from tests.support.server import numsub, open_sse, running_server

pytestmark = [pytest.mark.worker, pytest.mark.slow]

LEASE = 2.0
SLACK = 1.5


@pytest.fixture
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    with running_worker(redis_server.url, lease_seconds=LEASE) as running:
        yield running


@pytest.mark.parametrize("kill", ["pool child", "whole worker"])
async def test_watched_streams_end_worker_lost_when_the_worker_dies(
    worker: Worker, sync_redis: redis.Redis, kill: str
) -> None:
    settings = worker.settings.replace(max_streams_per_client=100)
    job = uuid.uuid4().hex
    worker.runner.enqueue(job, "tests.slow", {"seconds": 60})
    first = worker.wait_for_event(job, lambda e: (e.message or "").startswith("pid "))
    pid = int((first.message or "").split()[1])
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            created = await client.post("/api/v1/watches", json={"jobs": [{"job_id": job}]})
            assert created.status_code == 201
            urls = [f"/api/v1/jobs/{job}/events", created.json()["events_url"]]
            async with (
                open_sse(client, urls[0]) as (single, single_events),
                open_sse(client, urls[1]) as (watch, watch_events),
            ):
                await anext(single_events)
                await anext(watch_events)
                killed = time.monotonic()
                if kill == "pool child":
                    os.kill(pid, 9)
                else:
                    worker.kill()
                ends = [
                    [json.loads(e.data) async for e in ev] for ev in (single_events, watch_events)
                ]
                detected = time.monotonic() - killed
            assert single.ended and watch.ended
            for end in ends:
                assert end[-1]["status"] == "failure", end[-1]
                assert end[-1]["error"]["type"] == "WorkerLost"
            services = server.services
            await until(lambda: services.limiter.open == 0, 5, "stream slots released")
            await until(lambda: numsub(sync_redis, worker.keyspace, job) == 0, 5, "unsubscribed")
            assert services.hub.watched_jobs == 0
            again = await client.get(urls[0], headers={"Last-Event-ID": str(ends[0][-1]["seq"])})
            assert again.status_code == 204
    report(
        f"worker-lost/watched-{kill.replace(' ', '-')}",
        lease_s=LEASE,
        streams_ended_after_kill_s=round(detected, 2),
        bound_s=2 * LEASE,
    )
    assert detected < 2 * LEASE + SLACK
