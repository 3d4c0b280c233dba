"""Bad state in Redis and forged channel messages (issue 14, items 9 and 10).

Whatever Redis holds or its channels carry, an endpoint answers a clear error or a
stream ends with `StateLost`: never a hang, a misleading `503`, a dropped connection, a
list that grows without bound, or a background task dying unseen (tests/conftest.py
fails any test during which asyncio reported an exception nobody retrieved).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from tests.support.reliability import report
from tests.support.server import ServerThread, open_sse, publisher, running_server

FORGED_SEQ = 10**15


@pytest.fixture
def pub(settings: Settings) -> Iterator[Publisher]:
    p = publisher(settings)
    yield p
    p.redis.close()


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
