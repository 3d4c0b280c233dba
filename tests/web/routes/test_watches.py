"""Watches: one stream for many jobs, with a dot-separated per-job cursor as `id:`."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.tokens import mint_token
from tests.support.server import ServerThread, open_sse, read_all, running_server

SECRET = "watch-secret-0123456789-0123456789abcdef"


# Each test runs on one Redis and again on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.both_redis_modes


@pytest.fixture
def secured(settings: Settings) -> Settings:
    return settings.replace(auth="token", secret=SECRET)


@pytest.fixture
def server(secured: Settings) -> Iterator[ServerThread]:
    with running_server(secured) as server:
        yield server


@pytest.fixture
async def client(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


def started_jobs(pub: Publisher, n: int) -> list[str]:
    jobs = [uuid.uuid4().hex for _ in range(n)]
    for job in jobs:
        pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    return jobs


async def create_watch(client: httpx.AsyncClient, secured: Settings, jobs: list[str]) -> dict:  # type: ignore[type-arg]
    body = {"jobs": [{"job_id": j, "token": mint_token(secured, j)} for j in jobs]}
    response = await client.post("/api/v1/watches", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_one_stream_for_many_jobs_with_a_cursor(
    client: httpx.AsyncClient, secured: Settings, pub: Publisher
) -> None:
    a, b, c = started_jobs(pub, 3)
    watch = await create_watch(client, secured, [a, b, c])
    assert watch["events_url"] == f"/api/v1/watches/{watch['watch_id']}/events"
    url = watch["events_url"] + f"?token={watch['token']}"
    async with open_sse(client, url) as (_, events):
        snapshot = [await anext(events) for _ in range(3)]
        assert [e.id for e in snapshot] == ["1.0.0", "1.1.0", "1.1.1"]
        pub.publish(EventDraft(job_id=b, status=JobStatus.SUCCESS))
        assert (await anext(events)).id == "1.2.1"
        pub.publish(EventDraft(job_id=a, status=JobStatus.PROGRESS, percent=5.0))
        assert (await anext(events)).id == "2.2.1"
    # Resume after job a's seq 1: its seq 2 is replayed, b is done, c has nothing new.
    pub.publish(EventDraft(job_id=c, status=JobStatus.REVOKED))
    pub.publish(EventDraft(job_id=a, status=JobStatus.FAILURE))
    stream = await read_all(client, url, last_event_id="1.2.1")
    got = [(json.loads(e.data)["job_id"], json.loads(e.data)["seq"], e.id) for e in stream.events]
    assert got == [(a, 2, "2.2.1"), (a, 3, "3.2.1"), (c, 2, "3.2.2")]
    assert stream.ended
    assert (await client.get(url, headers={"Last-Event-ID": "3.2.2"})).status_code == 204


async def test_watch_creation_checks_every_job(
    client: httpx.AsyncClient, secured: Settings, pub: Publisher
) -> None:
    (a,) = started_jobs(pub, 1)
    unknown = uuid.uuid4().hex
    body = {"jobs": [{"job_id": a, "token": mint_token(secured, a)},
                     {"job_id": unknown, "token": mint_token(secured, unknown)}]}  # fmt: skip
    response = await client.post("/api/v1/watches", json=body)
    assert response.status_code == 404 and unknown in response.json()["error"]["message"]
    body = {"jobs": [{"job_id": a, "token": mint_token(secured, unknown)}]}
    response = await client.post("/api/v1/watches", json=body)
    assert response.status_code == 403 and a in response.json()["error"]["message"]
    for bad in ({"jobs": []}, {"jobs": [{"job_id": a}] * 101}, {"jobs": "x"}):
        assert (await client.post("/api/v1/watches", json=bad)).status_code == 422


async def test_watch_streams_need_the_watch_token(
    client: httpx.AsyncClient, secured: Settings, pub: Publisher
) -> None:
    jobs = started_jobs(pub, 2)
    watch = await create_watch(client, secured, jobs)
    other = await create_watch(client, secured, jobs[:1])
    url = watch["events_url"]
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, params={"token": other["token"]})).status_code == 403
    job_token = mint_token(secured, jobs[0])
    assert (await client.get(url, params={"token": job_token})).status_code == 401
    missing = f"/api/v1/watches/{uuid.uuid4().hex}/events"
    assert (await client.get(missing, params={"token": watch["token"]})).status_code == 403


async def test_a_watch_of_100_jobs_ends_after_every_terminal(
    client: httpx.AsyncClient, secured: Settings, pub: Publisher
) -> None:
    jobs = started_jobs(pub, 100)
    watch = await create_watch(client, secured, jobs)
    url = watch["events_url"] + f"?token={watch['token']}"
    async with open_sse(client, url) as (stream, events):
        for _ in range(100):
            await anext(events)
        for job in jobs:
            pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
        rest = [json.loads(e.data)["job_id"] async for e in events]
    assert sorted(rest) == sorted(jobs)
    assert stream.last_event_id == ".".join(["2"] * 100)
    again = await client.get(url, headers={"Last-Event-ID": stream.last_event_id})
    assert again.status_code == 204
