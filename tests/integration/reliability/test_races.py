"""Races and reconnect loops against the production web process (issue 6, items 1 and 2).

- 500 jobs finishing within milliseconds, each watched by a stream opened at that moment;
- 100 clients joining at random moments while 4 publishers run;
- a client following EventSource's rules makes one more request after the terminal
  event, answered 204, and stops.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer
from tests.support.reliability import (
    RawStream,
    WebProcess,
    raise_open_files,
    report,
    seqs_of,
    status_of,
    until,
    web_process,
)
from tests.support.server import publisher

pytestmark = pytest.mark.slow

TERMINAL = {"success", "failure", "revoked"}


@pytest.fixture(scope="module")
def module_settings(redis_server: RedisServer) -> Settings:
    return Settings(redis_url=redis_server.url, key_prefix=f"r{uuid.uuid4().hex[:10]}", auth="none")


@pytest.fixture(scope="module")
def web(module_settings: Settings) -> Iterator[WebProcess]:
    raise_open_files()
    with web_process(module_settings, PROGRESS_MAX_STREAMS_PER_CLIENT="5000") as web:
        yield web


async def watch_to_end(port: int, path: str, last_event_id: str | None = None) -> RawStream:
    stream = await RawStream.connect(port, path, last_event_id=last_event_id)
    try:
        await stream.read_head()
        if stream.status == 200:
            await stream.read_to_end()
    finally:
        await stream.close()
    return stream


def assert_contiguous_to_terminal(stream: RawStream) -> None:
    assert stream.status == 200 and stream.ended
    got = seqs_of(stream.record.events)
    assert got, "no event"
    assert got == list(range(got[0], got[0] + len(got))), got
    assert status_of(stream.record.events[-1]) in TERMINAL
    assert stream.record.raw.endswith(b"\n\n")


async def assert_all_closed(web: WebProcess) -> None:
    async with httpx.AsyncClient(timeout=10) as client:

        async def closed() -> bool:
            m = await web.metrics(client)
            return m["progress_open_streams"] == 0 and m["progress_watched_jobs"] == 0

        await until(closed, 10, "every stream closed")


async def test_500_jobs_finishing_within_ms_each_watched_from_that_moment(
    web: WebProcess, module_settings: Settings
) -> None:
    pub = publisher(module_settings)
    jobs = [uuid.uuid4().hex for _ in range(500)]
    for job in jobs:
        pub.publish(EventDraft(job_id=job, status=JobStatus.PENDING))
    pub.redis.close()
    queues: list[queue.SimpleQueue[tuple[str, JobStatus] | None]] = [
        queue.SimpleQueue() for _ in range(4)
    ]

    def publish_in_order(inbox: queue.SimpleQueue[tuple[str, JobStatus] | None]) -> None:
        local = publisher(module_settings)
        while (item := inbox.get()) is not None:
            job, status = item
            percent = 50.0 if status is JobStatus.PROGRESS else None
            local.publish(EventDraft(job_id=job, status=status, percent=percent))
        local.redis.close()

    rng = random.Random(1)
    loop = asyncio.get_running_loop()

    gate = asyncio.Semaphore(100)  # 100 requests in flight: ~10 ms to serve each one
    heads: list[float] = []

    async def watch(index: int, job: str) -> RawStream:
        async with gate:
            return await watch_while_finishing(index, job)

    async def watch_while_finishing(index: int, job: str) -> RawStream:
        stream = await RawStream.connect(web.port, f"/api/v1/jobs/{job}/events")
        sent = time.monotonic()
        # The job finishes while its stream's request is being served: its three events go
        # out at random moments within ~0.25 s, about the time the server takes to answer
        # (one publishing thread per job keeps their order).
        at = 0.0
        for status in (JobStatus.STARTED, JobStatus.PROGRESS, JobStatus.SUCCESS):
            at += rng.uniform(0, 0.08)
            loop.call_later(at, queues[index % 4].put, (job, status))
        try:
            await stream.read_head()
            heads.append(time.monotonic() - sent)
            await stream.read_to_end()
        finally:
            await stream.close()
        return stream

    threads = [threading.Thread(target=publish_in_order, args=(q,)) for q in queues]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    try:
        watchers = (watch(i, job) for i, job in enumerate(jobs))
        streams = await asyncio.wait_for(asyncio.gather(*watchers), 60)
        elapsed = time.monotonic() - started
    finally:
        await asyncio.sleep(1.5)  # let pending call_later puts run before the sentinel
        for q in queues:
            q.put(None)
        for thread in threads:
            thread.join(10)
    for stream in streams:
        assert_contiguous_to_terminal(stream)
        assert seqs_of(stream.record.events)[-1] == 4
    firsts = [seqs_of(s.record.events)[0] for s in streams]
    await assert_all_closed(web)
    report(
        "races/500-jobs",
        streams=len(streams),
        all_streams_ended_seconds=round(elapsed, 3),
        first_seq_histogram={n: firsts.count(n) for n in sorted(set(firsts))},
        median_time_to_headers_ms=round(1000 * sorted(heads)[len(heads) // 2], 1),
    )


async def test_100_clients_joining_at_random_moments_while_4_publishers_run(
    web: WebProcess, module_settings: Settings
) -> None:
    rng = random.Random(6)
    jobs = [uuid.uuid4().hex for _ in range(4)]
    pub = publisher(module_settings)
    for job in jobs:
        pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    pub.redis.close()
    go = threading.Event()

    def run(job: str) -> None:
        local = publisher(module_settings)
        go.wait(10)
        for i in range(300):
            local.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, message=f"m{i}"))
            if i % 10 == 0:
                time.sleep(0.01)  # pacing: the burst lasts long enough for clients to join
        local.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
        local.redis.close()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    plans = [
        (rng.choice(jobs), rng.uniform(0, 0.6), rng.choice([None, None, rng.randint(1, 60)]))
        for _ in range(100)
    ]

    async def client(job: str, delay: float, resume: int | None) -> RawStream:
        await asyncio.sleep(delay)  # a random moment to join, not a synchronisation
        last = None if resume is None else str(resume)
        return await watch_to_end(web.port, f"/api/v1/jobs/{job}/events", last)

    try:
        tasks = [asyncio.create_task(client(*plan)) for plan in plans]
        go.set()
        streams = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        go.set()
        for thread in threads:
            thread.join()
    resumed = 0
    for (_, _, resume), stream in zip(plans, streams, strict=True):
        assert_contiguous_to_terminal(stream)
        assert seqs_of(stream.record.events)[-1] == 302
        if resume is not None:
            first = seqs_of(stream.record.events)[0]
            # From its own id on, or the snapshot when the id was ahead of the job.
            assert first == resume + 1 or first <= resume, (resume, first)
            resumed += first == resume + 1
    await assert_all_closed(web)
    lengths = [len(s.record.events) for s in streams]
    report(
        "races/100-random-joins",
        clients=len(streams),
        resumed_from_own_id=resumed,
        events_per_client_min=min(lengths),
        events_per_client_max=max(lengths),
    )


class EventSourceClient:
    """EventSource's reconnect rules: reconnect after the server ends the stream, with
    `Last-Event-ID`; stop on any status other than 200 (204 included)."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.last_event_id: str | None = None
        self.requests: list[int] = []  # status of each request
        self.after_terminal: list[int] = []  # statuses of requests made after the terminal
        self.events: list[dict[str, object]] = []

    async def run(self, max_requests: int = 20) -> None:
        terminal_seen = False
        while len(self.requests) < max_requests:
            stream = await watch_to_end(self.port, self.path, self.last_event_id)
            self.requests.append(stream.status)
            if terminal_seen:
                self.after_terminal.append(stream.status)
            if stream.status != 200:
                return  # EventSource fails the connection: no more reconnects
            for event in stream.record.events:
                self.events.append(json.loads(event.data))
            self.last_event_id = stream.last_event_id
            terminal_seen = terminal_seen or self._saw_terminal()

    def _saw_terminal(self) -> bool:
        return bool(self.events) and all(
            any(e["job_id"] == job and e["status"] in TERMINAL for e in self.events)
            for job in {e["job_id"] for e in self.events}
        )


async def test_after_the_terminal_an_eventsource_makes_one_more_request_answered_204(
    web: WebProcess, module_settings: Settings
) -> None:
    pub = publisher(module_settings)
    live, done = uuid.uuid4().hex, uuid.uuid4().hex
    pub.publish(EventDraft(job_id=live, status=JobStatus.STARTED))
    for status in (JobStatus.STARTED, JobStatus.FAILURE):
        pub.publish(EventDraft(job_id=done, status=status))
    clients = [
        EventSourceClient(web.port, f"/api/v1/jobs/{live}/events"),
        EventSourceClient(web.port, f"/api/v1/jobs/{done}/events"),
        # EventSource keeps the first URL's query on reconnects; the header must win.
        EventSourceClient(web.port, f"/api/v1/jobs/{live}/events?last_event_id=0"),
    ]
    async with httpx.AsyncClient(base_url=web.url, timeout=10) as http:
        created = await http.post(
            "/api/v1/watches", json={"jobs": [{"job_id": live}, {"job_id": done}]}
        )
        assert created.status_code == 201
        clients.append(EventSourceClient(web.port, created.json()["events_url"]))
        runs = [asyncio.create_task(c.run()) for c in clients]

        async def all_streaming() -> bool:
            return (await web.metrics(http))["progress_open_streams"] >= 3

        await until(all_streaming, 10, "the live streams are open")
        for percent in (10.0, 60.0):
            pub.publish(EventDraft(job_id=live, status=JobStatus.PROGRESS, percent=percent))
        pub.publish(EventDraft(job_id=live, status=JobStatus.SUCCESS))
        await asyncio.wait_for(asyncio.gather(*runs), 30)
    pub.redis.close()
    for c in clients:
        assert c.after_terminal == [204], (c.path, c.requests)
        assert c.requests[-1] == 204 and all(s == 200 for s in c.requests[:-1])
    await assert_all_closed(web)
    report(
        "reconnect/eventsource-204",
        clients=len(clients),
        requests_per_client=[len(c.requests) for c in clients],
        requests_after_terminal=[len(c.after_terminal) for c in clients],
    )
