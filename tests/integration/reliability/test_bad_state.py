"""Bad state in Redis and forged channel messages (issue 14, items 9 and 10).

Whatever Redis holds or its channels carry, an endpoint answers a clear error or a
stream ends with `StateLost`: never a hang, a misleading `503`, a dropped connection, a
list that grows without bound, or a background task dying unseen (tests/conftest.py
fails any test during which asyncio reported an exception nobody retrieved).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from progress_streamer.protocol import files
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.keys import FileField, KeySpace
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from tests.support.reliability import report
from tests.support.server import ServerThread, open_sse, running_server

FORGED_SEQ = 10**15


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    with running_server(settings) as server:
        yield server


def started_job(pub: Publisher, *percents: float) -> str:
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    for percent in percents:
        pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=percent))
    return job


async def watch_url(client: httpx.AsyncClient, *jobs: str) -> str:
    body = {"jobs": [{"job_id": job, "token": None} for job in jobs]}
    created = await client.post("/api/v1/watches", json=body)
    assert created.status_code == 201
    url: str = created.json()["events_url"]
    return url


async def test_a_forged_seq_on_the_channel_hides_no_real_event(
    server: ServerThread, pub: Publisher, sync_redis: redis.Redis, keyspace: KeySpace
) -> None:
    """Regression (item 9): one message with seq 10^15 on a job's channel made the hub
    drop every later real event, the terminal one included; the streams never ended."""
    job = started_job(pub)
    keys = keyspace.job(job)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        url = await watch_url(client, job)
        async with (
            open_sse(client, f"/api/v1/jobs/{job}/events") as (_, job_events),
            open_sse(client, url) as (_, watch_events),
        ):
            assert json.loads((await anext(job_events)).data)["seq"] == 1
            assert json.loads((await anext(watch_events)).data)["seq"] == 1
            snapshot = sync_redis.hget(keys.state, "event")
            assert isinstance(snapshot, bytes)
            forged = re.sub(rb'"seq":\d+', b'"seq":%d' % FORGED_SEQ, snapshot)
            sync_redis.publish(keys.channel, forged)
            pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=50.0))
            pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result=1))
            async with asyncio.timeout(10):
                job_rest = [json.loads(e.data)["seq"] async for e in job_events]
                watch_rest = [json.loads(e.data)["seq"] async for e in watch_events]
    assert job_rest == [2, 3]
    assert watch_rest == [2, 3]
    report("forged_seq", delivered=job_rest, rechecks=server.services.metrics.rechecks._value.get())


def corrupt_snapshot(sync_redis: redis.Redis, keyspace: KeySpace, job: str) -> None:
    sync_redis.hset(keyspace.job(job).state, "event", b'{"job_id": "garbage"')


def assert_clear_500(response: httpx.Response, caplog: pytest.LogCaptureFixture) -> None:
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal"
    assert "unreadable" in error["message"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_a_garbage_snapshot_or_history_entry_answers_a_clear_error(
    server: ServerThread,
    pub: Publisher,
    sync_redis: redis.Redis,
    keyspace: KeySpace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression (item 10): a garbage snapshot or history entry gave a bare `500
    internal server error` with a traceback per request."""
    caplog.set_level(logging.WARNING)
    job, other = started_job(pub, 10.0, 20.0), started_job(pub, 10.0, 20.0)
    corrupt_snapshot(sync_redis, keyspace, job)
    sync_redis.lset(keyspace.job(other).history, 1, b"not an event")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert_clear_500(await client.get(f"/api/v1/jobs/{job}"), caplog)
        assert_clear_500(await client.get(f"/api/v1/jobs/{job}/events"), caplog)
        resume = {"Last-Event-ID": "1"}  # the history entry after it is garbage
        assert_clear_500(await client.get(f"/api/v1/jobs/{other}/events", headers=resume), caplog)
        assert (await client.get(f"/api/v1/jobs/{other}")).status_code == 200
        url = await watch_url(client, job, other)  # in a watch, that job alone ends
        async with open_sse(client, url) as (_, events):
            first = [json.loads((await anext(events)).data) for _ in range(2)]
        assert sorted((e["job_id"] == job, e["status"]) for e in first) == [
            (False, "progress"),
            (True, "failure"),
        ]
        assert next(e for e in first if e["job_id"] == job)["error"]["type"] == "StateLost"


async def test_a_key_of_the_wrong_type_is_not_called_redis_unavailable(
    server: ServerThread,
    pub: Publisher,
    sync_redis: redis.Redis,
    keyspace: KeySpace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression (item 10): a job key of the wrong type answered `503 Redis is
    unavailable`, sending clients to retry what can never work."""
    caplog.set_level(logging.WARNING)
    job = started_job(pub)
    state = keyspace.job(job).state
    sync_redis.delete(state)
    sync_redis.set(state, b"a string, not a hash")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for url in (f"/api/v1/jobs/{job}", f"/api/v1/jobs/{job}/events"):
            response = await client.get(url)
            assert response.status_code == 500, url
            assert response.json()["error"]["code"] == "internal"
            assert "wrong type" in response.json()["error"]["message"]
        assert (await client.get("/readyz")).status_code == 200


async def test_a_garbage_snapshot_met_by_a_reconnect_ends_the_stream_with_state_lost(
    server: ServerThread, pub: Publisher, sync_redis: redis.Redis, keyspace: KeySpace, prefix: str
) -> None:
    """Regression (item 10): a garbage snapshot met during the catch-up after a pub/sub
    reconnect killed the catch-up task ("Task exception was never retrieved"); the stream
    stayed open with no events while live events piled up in an unbounded list."""
    job = started_job(pub)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with open_sse(client, f"/api/v1/jobs/{job}/events") as (_, events):
            assert json.loads((await anext(events)).data)["seq"] == 1
            corrupt_snapshot(sync_redis, keyspace, job)
            hub = [c for c in sync_redis.client_list(_type="pubsub")
                   if c["name"] == f"progress-hub-{prefix}"]  # fmt: skip
            sync_redis.client_kill_filter(_id=hub[0]["id"])
            async with asyncio.timeout(10):
                rest = [json.loads(e.data) async for e in events]
    assert [(e["seq"], e["status"], e["error"]["type"]) for e in rest] == [
        (2, "failure", "StateLost")
    ]
    assert not any(sub.job_ids == (job,) for sub in server.services.hub.subscribers())


async def test_a_content_type_with_control_characters_gets_an_answer(
    server: ServerThread,
    pub: Publisher,
    settings: Settings,
    sync_redis: redis.Redis,
    keyspace: KeySpace,
) -> None:
    """Regression (item 10): a stored content type with a control character made the
    server drop the connection without any response."""
    job = started_job(pub)
    files.attach_file(sync_redis, settings, job, "r.txt", b"report", "text/plain")
    sync_redis.hset(keyspace.job(job).file, FileField.CONTENT_TYPE, "text/plain\x01; x=\x7f")
    pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result=1))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.get(f"/api/v1/jobs/{job}/result")
    assert response.status_code == 200
    assert response.content == b"report"
    assert response.headers["content-type"] == "application/octet-stream"
