"""GET /api/v1/jobs/{id}/events against a real uvicorn and a real Redis."""

from __future__ import annotations

import asyncio
import json
import threading
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
from tests.support.server import (
    ServerThread,
    eventually,
    numsub,
    open_sse,
    publisher,
    read_all,
    running_server,
)

# Each test runs on one Redis and again on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.both_redis_modes


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    with running_server(settings.replace(ping_seconds=30)) as server:
        yield server


def new_job(pub: Publisher, *statuses: JobStatus) -> str:
    job = uuid.uuid4().hex
    for status in statuses:
        pub.publish(EventDraft(job_id=job, status=status))
    return job


def seqs(stream: object) -> list[int]:
    return [json.loads(e.data)["seq"] for e in stream.events]  # type: ignore[attr-defined]


async def test_snapshot_then_live_events_then_the_end(server: ServerThread, pub: Publisher) -> None:
    job = new_job(pub, JobStatus.PENDING, JobStatus.STARTED)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with open_sse(client, f"/api/v1/jobs/{job}/events") as (stream, events):
            response = stream.response
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert "content-encoding" not in response.headers
            first = await anext(events)
            assert stream.raw.startswith(b"retry: 2000\n")
            assert (first.id, json.loads(first.data)["status"]) == ("2", "started")
            pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=75.0))
            second = await anext(events)
            assert second.event == "message" and second.id == "3"
            assert '"percent":75.0' in second.data
            pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result={"ok": 1}))
            rest = [e async for e in events]
    assert [e.id for e in rest] == ["4"]
    assert stream.ended and stream.raw.endswith(b"\n\n")
    assert b"event:" not in stream.raw


async def test_a_job_finished_before_the_client_came_still_ends_its_stream(
    server: ServerThread, pub: Publisher
) -> None:
    job = new_job(pub, JobStatus.PENDING, JobStatus.STARTED, JobStatus.SUCCESS)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        stream = await read_all(client, f"/api/v1/jobs/{job}/events")
    assert seqs(stream) == [3]
    assert json.loads(stream.events[0].data)["status"] == "success"


async def test_204_for_a_reconnect_at_or_past_the_terminal(
    server: ServerThread, pub: Publisher
) -> None:
    job = new_job(pub, JobStatus.STARTED, JobStatus.FAILURE)
    url = f"/api/v1/jobs/{job}/events"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for last in ("2", "9"):
            response = await client.get(url, headers={"Last-Event-ID": last})
            assert response.status_code == 204
        assert seqs(await read_all(client, url, last_event_id="1")) == [2]
        assert seqs(await read_all(client, url + "?last_event_id=1")) == [2]
        # The header wins over the query parameter.
        response = await client.get(url + "?last_event_id=1", headers={"Last-Event-ID": "2"})
        assert response.status_code == 204


async def test_resume_replays_retained_events_and_bad_ids_get_the_snapshot(
    server: ServerThread, settings: Settings
) -> None:
    pub = publisher(settings.replace(history=5))
    job = new_job(pub, JobStatus.STARTED)
    for percent in range(1, 10):
        pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=float(percent)))
    pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
    pub.redis.close()
    url = f"/api/v1/jobs/{job}/events"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert seqs(await read_all(client, url, last_event_id="7")) == [8, 9, 10, 11]
        for bad in ("2", "abc", "-1", "99999999999999999999", "1e3"):
            assert seqs(await read_all(client, url, last_event_id=bad)) == [11], bad


async def test_no_event_lost_or_repeated_across_reconnects_while_publishing(
    server: ServerThread, pub: Publisher
) -> None:
    job = new_job(pub, JobStatus.STARTED)
    url = f"/api/v1/jobs/{job}/events"
    received: list[int] = []
    last: str | None = None
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for round_ in range(6):
            async with open_sse(client, url, last_event_id=last) as (stream, events):
                async for event in events:
                    received.append(int(event.id or 0))
                    last = event.id
                    pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, message="x"))
                    if len(received) % 7 == 0:
                        break
            # published while nobody listens
            pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, message=str(round_)))
        pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
        stream = await read_all(client, url, last_event_id=last)
    received += seqs(stream)
    assert received == list(range(1, received[-1] + 1))
    assert json.loads(stream.events[-1].data)["status"] == "success"


async def test_unknown_and_malformed_job_ids_get_a_json_404(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for job in (uuid.uuid4().hex, "%2A", "a:b", "x" * 65, "job%0d%0a"):
            response = await client.get(f"/api/v1/jobs/{job}/events")
            assert response.status_code == 404, job
            assert response.json()["error"]["code"] == "not_found"


async def test_a_disconnect_releases_the_subscription(
    server: ServerThread, pub: Publisher, sync_redis: redis.Redis, keyspace: KeySpace
) -> None:
    job = new_job(pub, JobStatus.STARTED)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with open_sse(client, f"/api/v1/jobs/{job}/events") as (_, events):
            await anext(events)
            assert numsub(sync_redis, keyspace, job) == 1
            assert server.services.limiter.open == 1
    await eventually(lambda: numsub(sync_redis, keyspace, job) == 0)
    await eventually(lambda: server.services.limiter.open == 0)
    assert sync_redis.pubsub_numpat() == 0


async def test_head_answers_the_headers_and_holds_nothing_open(
    server: ServerThread, pub: Publisher, sync_redis: redis.Redis, keyspace: KeySpace
) -> None:
    job = new_job(pub, JobStatus.STARTED)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.head(f"/api/v1/jobs/{job}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    await eventually(lambda: server.services.limiter.open == 0)
    await eventually(lambda: numsub(sync_redis, keyspace, job) == 0)


async def test_quiet_streams_get_pings_and_end_after_their_lifetime(
    settings: Settings, pub: Publisher
) -> None:
    job = new_job(pub, JobStatus.STARTED)
    quick = settings.replace(ping_seconds=0.2, max_stream_seconds=1.0)
    with running_server(quick) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            stream = await read_all(client, f"/api/v1/jobs/{job}/events")
    assert seqs(stream) == [1]
    assert stream.comments.count("ping") >= 2
    assert stream.ended  # the lifetime ended it; the client resumes with Last-Event-ID


async def test_the_stream_cap_answers_503_while_the_api_keeps_answering(
    settings: Settings, pub: Publisher
) -> None:
    job = new_job(pub, JobStatus.STARTED)
    with running_server(settings.replace(max_streams=3)) as server:
        url = f"/api/v1/jobs/{job}/events"
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with (
                open_sse(client, url) as (_, a),
                open_sse(client, url) as (_, b),
                open_sse(client, url) as (_, c),
            ):
                for events in (a, b, c):
                    await anext(events)
                refused = await client.get(url)
                assert refused.status_code == 503
                assert refused.headers["retry-after"].isdigit()
                assert refused.json()["error"]["code"] == "too_many_streams"
                assert (await client.get(f"/api/v1/jobs/{job}")).status_code == 200


async def test_the_per_client_cap_answers_503(settings: Settings, pub: Publisher) -> None:
    job = new_job(pub, JobStatus.STARTED)
    with running_server(settings.replace(max_streams_per_client=1)) as server:
        url = f"/api/v1/jobs/{job}/events"
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with open_sse(client, url) as (_, events):
                await anext(events)
                refused = await client.get(url)
                assert refused.status_code == 503


async def test_event_text_cannot_forge_frames(server: ServerThread, pub: Publisher) -> None:
    job = new_job(pub, JobStatus.STARTED)
    forged = "a\r\n\r\nevent: success\ndata: pwned\n\n\udcff"
    pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, message=forged))
    pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        stream = await read_all(client, f"/api/v1/jobs/{job}/events", last_event_id="1")
    assert [e.event for e in stream.events] == ["message", "message"]
    assert json.loads(stream.events[0].data)["message"] == forged
    stream.raw.decode("utf-8")  # valid UTF-8 throughout


async def test_clients_joining_mid_burst_see_every_seq_once_in_order(
    server: ServerThread, settings: Settings
) -> None:
    job = uuid.uuid4().hex
    pub = publisher(settings)
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    go = threading.Event()

    def burst() -> None:
        go.wait(10)
        for _ in range(400):
            pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, message="m"))
        pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))

    thread = threading.Thread(target=burst)
    thread.start()
    url = f"/api/v1/jobs/{job}/events"
    limits = httpx.Limits(max_connections=50)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as client:

            async def watch(index: int) -> list[int]:
                async with open_sse(client, url) as (_, events):
                    got = []
                    async for event in events:
                        got.append(int(event.id or 0))
                        if index == 0 and len(got) == 1:
                            go.set()  # the burst starts once the first client is in
                    return got

            results = await asyncio.gather(*(watch(i) for i in range(20)))
    finally:
        go.set()
        thread.join()
        pub.redis.close()
    for got in results:
        assert got == list(range(got[0], 403)), got[:5]
