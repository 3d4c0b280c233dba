"""Per-client quotas on the POST endpoints, held in Redis across web processes."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from tests.support.server import FakeRunner, publisher, running_server

# Each test runs on one Redis and again on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.both_redis_modes


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.replace(post_rate=0.2, post_burst=3)


async def test_enqueueing_past_the_burst_gets_429_in_every_process(limited: Settings) -> None:
    """Regression (issue 14, item 7): 6,329 jobs were enqueued in 10 s from one client.
    The bucket lives in Redis, so a second web process shares it."""
    runner = FakeRunner(limited)
    body = {"task": "demo.report", "params": {"steps": 1, "step_ms": 0}}
    with (
        running_server(limited, {"celery": runner}) as one,
        running_server(limited, {"celery": runner}) as two,
    ):
        async with httpx.AsyncClient(timeout=10) as client:
            answers = [
                await client.post(f"{server.url}/api/v1/jobs", json=body)
                for server in (one, two, one, two)
            ]
    runner.close()
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 5


async def test_a_backend_with_the_api_key_is_not_limited(limited: Settings) -> None:
    keyed = limited.replace(api_key="k" * 32)
    runner = FakeRunner(keyed)
    with running_server(keyed, {"celery": runner}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            headers = {"Authorization": f"Bearer {keyed.api_key}"}
            codes = {
                (
                    await client.post("/api/v1/jobs", json={"task": "demo.report"}, headers=headers)
                ).status_code
                for _ in range(6)
            }
    runner.close()
    assert codes == {202}


async def test_watches_are_bounded_per_client_and_expire_with_their_jobs(
    settings: Settings, sync_redis: redis.Redis, keyspace: KeySpace
) -> None:
    """Regression (issue 14, item 7): one job token made watches at ~3.7 GB/hour of keys
    kept 24 h."""
    bounded = settings.replace(max_watches_per_client=2, post_rate=100, post_burst=100)
    pub = publisher(bounded)
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result=1))
    sync_redis.expire(keyspace.job(job).state, 30)  # a job with 30 s left to live
    with running_server(bounded) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = {"jobs": [{"job_id": job, "token": None}]}
            answers = [await client.post("/api/v1/watches", json=body) for _ in range(3)]
    pub.redis.close()
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert answers[2].json()["error"]["code"] == "too_many_requests"
    watch_key = keyspace.watch(answers[0].json()["watch_id"])
    assert 0 < sync_redis.pttl(watch_key) <= 30_000  # not PROGRESS_JOB_TTL (24 h)


async def test_demo_tasks_are_bounded_to_a_few_minutes(settings: Settings) -> None:
    runner = FakeRunner(settings)
    with running_server(settings, {"celery": runner}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:

            async def post(task: str, **params: int) -> httpx.Response:
                return await client.post("/api/v1/jobs", json={"task": task, "params": params})

            long_report = await post("demo.report", steps=1000, step_ms=60000)
            long_fail = await post("demo.fail", fail_at=100, step_ms=60000)
            fine = await post("demo.report", steps=1000, step_ms=200)
    runner.close()
    for refused in (long_report, long_fail):
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "invalid_params"
        assert "at most 300 s" in refused.json()["error"]["message"]
    assert fine.status_code == 202
