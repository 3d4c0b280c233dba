"""The app (`web/app.py`): what an ended stream leaves behind in the process.

A stream holds the server's request cycle (through its direct writer); if the request's
scope held the stream in turn, every ended stream would be a reference cycle: its
subscriber, queued frames, the request cycle and the transport kept until Python's next
full garbage collection, which with thousands of streams open takes half a second
(docs/benchmarks.md, "Garbage"). Each test runs with the collector off, so only
reference counting can free what an ended stream held.
"""

from __future__ import annotations

import gc
import uuid
import weakref
from collections.abc import Iterator

import httpx
import pytest

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.streaming.subscriber import Subscriber
from tests.support.server import ServerThread, eventually, running_server


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def started_job(pub: Publisher) -> str:
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    return job


def only_subscriber(server: ServerThread) -> weakref.ref[Subscriber]:
    [sub] = server.services.hub.subscribers()
    return weakref.ref(sub)


async def freed(server: ServerThread, sub: weakref.ref[Subscriber]) -> None:
    await eventually(lambda: not server.services.hub.subscribers())
    await eventually(lambda: sub() is None)


@pytest.mark.usefixtures("no_collector")
@pytest.mark.parametrize("ending", ["the client leaves", "the job ends"])
async def test_an_ended_job_stream_is_freed_without_the_garbage_collector(
    settings: Settings, pub: Publisher, ending: str
) -> None:
    job = started_job(pub)
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with client.stream("GET", f"/api/v1/jobs/{job}/events") as response:
                lines = response.aiter_lines()
                assert await anext(lines) == "retry: 2000"
                await eventually(lambda: len(server.services.hub.subscribers()) == 1)
                sub = only_subscriber(server)
                if ending == "the job ends":
                    pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result=1))
                    assert any([line.startswith("id: 2") async for line in lines])
            # "the job ends": the connection stays open (keep-alive) for the next request
            await freed(server, sub)


@pytest.mark.usefixtures("no_collector")
async def test_an_ended_watch_stream_is_freed_without_the_garbage_collector(
    settings: Settings, pub: Publisher
) -> None:
    jobs = [started_job(pub) for _ in range(3)]
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            made = await client.post(
                "/api/v1/watches", json={"jobs": [{"job_id": job} for job in jobs]}
            )
            assert made.status_code == 201, made.text
            async with client.stream("GET", made.json()["events_url"]) as response:
                lines = response.aiter_lines()
                assert await anext(lines) == "retry: 2000"
                await eventually(lambda: len(server.services.hub.subscribers()) == 1)
                sub = only_subscriber(server)
                for job in jobs:
                    pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result=1))
                assert len([line async for line in lines if line.startswith("id: ")]) >= 3
            await freed(server, sub)
