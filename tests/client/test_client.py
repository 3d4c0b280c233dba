"""The Python client against a real uvicorn and Redis (and a real Celery worker)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from progress_streamer.client import (
    AsyncProgressClient,
    Forbidden,
    JobNotFound,
    ProgressClient,
    Unauthorized,
)
from progress_streamer.protocol import EventDraft, JobStatus, Publisher, Settings
from progress_streamer.redis_server import RedisServer
from progress_streamer.web import mint_token
from tests.support.celery_worker import Worker, running_worker
from tests.support.server import ServerThread, publisher, running_server

SECRET = "client-secret-0123456789-0123456789abcdef"


@pytest.fixture
def secured(settings: Settings) -> Settings:
    # Streams end after ~1 s (jittered), so a client must resume mid-job to see it all.
    return settings.replace(auth="token", secret=SECRET, max_stream_seconds=1.0)


@pytest.fixture
def server(secured: Settings) -> Iterator[ServerThread]:
    with running_server(secured) as server:
        yield server


@pytest.fixture
def pub(secured: Settings) -> Iterator[Publisher]:
    p = publisher(secured)
    yield p
    p.redis.close()


def publish_200_events(pub: Publisher, job: str, seconds: float) -> threading.Thread:
    """`started`, 198 `progress` and `success`, paced over `seconds`, in a thread."""

    def run() -> None:
        pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
        for i in range(198):
            pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, current=i + 1))
            time.sleep(seconds / 198)  # pacing the publisher, not synchronisation
        pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result={"n": 198}))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_every_event_in_order_across_the_servers_stream_ends(
    server: ServerThread, pub: Publisher, secured: Settings
) -> None:
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.PENDING))
    token = mint_token(secured, job)
    seqs: list[int] = []
    with ProgressClient(server.url, token=token) as client:
        for event in client.events(job):
            if not seqs:  # the snapshot (pending) is in: now the job runs
                publisher_thread = publish_200_events(pub, job, seconds=3.0)
            seqs.append(event.seq)
    publisher_thread.join()
    assert seqs == list(range(1, 202))  # snapshot (pending), then every event once
    with ProgressClient(server.url, token=token) as client:
        assert client.wait(job, timeout=10).result == {"n": 198}
        assert list(client.events(job, last_event_id=201)) == []  # 204: finished and seen
        assert client.status(job)["status"] == "success"


def test_auth_and_unknown_jobs_raise_clear_errors(
    server: ServerThread, pub: Publisher, secured: Settings
) -> None:
    job, other = uuid.uuid4().hex, uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    with ProgressClient(server.url) as client:
        with pytest.raises(Unauthorized):
            next(iter(client.events(job, token="forged")))
        with pytest.raises(Forbidden):
            next(iter(client.events(job, token=mint_token(secured, other))))
        with pytest.raises(JobNotFound):
            client.status(other, token=mint_token(secured, other))


def test_wait_gives_up_at_its_timeout(
    server: ServerThread, pub: Publisher, secured: Settings
) -> None:
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    with ProgressClient(server.url, token=mint_token(secured, job)) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.wait(job, timeout=1.5)
        assert time.monotonic() - started < 10


async def test_the_async_client_follows_a_watch_of_two_jobs(
    server: ServerThread, pub: Publisher, secured: Settings
) -> None:
    jobs = [uuid.uuid4().hex, uuid.uuid4().hex]
    for job in jobs:
        pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    refs = [(job, mint_token(secured, job)) for job in jobs]
    async with AsyncProgressClient(server.url) as client:
        seen: list[tuple[str, str]] = []
        for job in jobs:
            pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result=job))
        async for event in client.watch(refs):
            seen.append((event.job_id, event.status.value))
        assert {s for _, s in seen} >= {"success"}
        assert [s for j, s in seen if j == jobs[0]][-1] == "success"
        assert [s for j, s in seen if j == jobs[1]][-1] == "success"
        done = await client.wait(jobs[0], token=refs[0][1], timeout=10)
        assert done.result == jobs[0]


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    with running_worker(redis_server.url) as running:
        yield running


@pytest.mark.worker
def test_enqueue_wait_and_download_with_a_real_worker(worker: Worker, tmp_path: Path) -> None:
    settings = worker.settings.replace(auth="token", secret=SECRET)
    with (
        running_server(settings, {"celery": worker.runner}) as server,
        ProgressClient(server.url) as client,
    ):
        job = client.enqueue("demo.report", steps=5, step_ms=10)
        end = client.wait(job.job_id, job.token, timeout=60)
        assert end.status == JobStatus.SUCCESS
        saved = client.download(job.job_id, tmp_path, job.token)
        assert saved.name == end.result["filename"]
        assert saved.read_bytes().startswith(b"page,region,units,revenue")
