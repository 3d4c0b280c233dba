"""docs/deploy.md, for real: nginx with `deploy/nginx.conf` in front of two web processes
(the Procfile's command, each on its own port), on the session's Redis.

SIGTERM the process that holds a job's stream and a watch's stream: the project's own
resuming client (`progress_streamer.client`) comes back through nginx on the other
process with its last id, every job's seqs stay contiguous to the terminal, and a resume
after the terminal gets `204`. A raw SSE reader on the same process checks the wire (the
client drops repeats silently): the cut response ends cleanly, and it plus the resumed
one hold every seq exactly once. Run with the per-job affinity (`hash` on the job id)
and without it (`least_conn` for every stream). And the forwarded headers: behind nginx,
each browser address counts on its own against the per-client stream cap.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from app.nginx import NGINX_CONF, find_nginx, main_config, nginx_command, site_config
from progress_streamer.client import AsyncProgressClient, ProgressEvent
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import free_port
from tests.support import ROOT
from tests.support.doc_project import Process, answers, doc_files
from tests.support.reliability import RawStream, WebProcess, seqs_of, status_of, until
from tests.support.server import SSEEvent, publisher

pytestmark = pytest.mark.slow

NGINX = find_nginx()
SHUTDOWN_SECONDS = 2
WITHIN = 30.0  # generous: a busy 2-core machine
T = TypeVar("T")


def test_the_doc_shows_the_tested_configuration() -> None:
    shown = doc_files((ROOT / "docs" / "deploy.md").read_text()).get("deploy/nginx.conf")
    assert shown is not None, "docs/deploy.md lost its `# deploy/nginx.conf` block"
    assert "# deploy/nginx.conf\n" + shown == NGINX_CONF.read_text()


class Deployment:
    """Two web processes and nginx with the repository's configuration in front."""

    def __init__(self, settings: Settings, folder: Path, *, affinity: bool, **extra: str) -> None:
        assert NGINX is not None
        env = {
            "PROGRESS_TRUSTED_PROXIES": "127.0.0.1",
            "PROGRESS_SHUTDOWN_SECONDS": str(SHUTDOWN_SECONDS),
            **extra,
        }
        self.webs = [WebProcess(settings, graceful=SHUTDOWN_SECONDS, **env) for _ in range(2)]
        self.nginx: Process | None = None
        self.port = free_port()
        try:
            for web in self.webs:
                web.wait_ready()
            site = site_config([w.port for w in self.webs], listen=self.port, affinity=affinity)
            conf = main_config(folder, site)
            self.nginx = Process("nginx", nginx_command(NGINX, folder, conf), cwd=folder, env={})
            self.nginx.wait_until(lambda: answers(f"{self.url}/healthz"))
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def open_streams(self, http: httpx.AsyncClient) -> list[int]:
        return [int((await w.metrics(http))["progress_open_streams"]) for w in self.webs]

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for web in self.webs:
            web.stop()

    def logs(self) -> str:
        """The tails of every log (printed at teardown: pytest shows them on a failure)."""
        nginx = self.nginx.log()[-2000:] if self.nginx is not None else ""
        webs = [f"--- web {w.port}\n{w.log()[-2000:]}" for w in self.webs]
        return "\n".join([f"--- nginx\n{nginx}", *webs])


@pytest.fixture
def nginx() -> str:
    if NGINX is None:
        pytest.skip("nginx is not installed (.ci/run installs nginx-light)")
    return NGINX


@pytest.fixture(params=[True, False], ids=["affinity", "least_conn"])
def deployment(
    request: pytest.FixtureRequest, nginx: str, settings: Settings, tmp_path: Path
) -> Iterator[Deployment]:
    deployment = Deployment(settings, tmp_path, affinity=request.param)
    try:
        yield deployment
    finally:
        print(deployment.logs())
        deployment.stop()


class Follower:
    """One client of the project's own (resuming) client library, through nginx: the
    events it yielded, and every stream request it sent."""

    def __init__(self, url: str) -> None:
        self.requests: list[httpx.Request] = []
        self.events: list[ProgressEvent] = []

        async def record(request: httpx.Request) -> None:
            if request.url.path.endswith("/events"):
                self.requests.append(request)

        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(WITHIN, read=None), event_hooks={"request": [record]}
        )
        self.client = AsyncProgressClient(url, http=self.http)
        self.task: asyncio.Task[None] | None = None

    def follow(self, events: AsyncIterator[ProgressEvent]) -> None:
        async def collect() -> None:
            async for event in events:
                self.events.append(event)

        self.task = asyncio.create_task(collect())

    def seqs(self, job_id: str) -> list[int]:
        return [e.seq for e in self.events if e.job_id == job_id]

    async def finish(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, WITHIN)
        await self.http.aclose()


def contiguous(seqs: list[int]) -> bool:
    return bool(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def placed(deployment: Deployment, http: httpx.AsyncClient, total: int) -> list[int]:
    """Open streams per process, once they add up to `total`."""
    counts: list[int] = []

    async def check() -> bool:
        counts[:] = await deployment.open_streams(http)
        return sum(counts) == total

    await until(check, WITHIN, f"{total} open streams")
    return counts


async def open_until_on(
    deployment: Deployment,
    http: httpx.AsyncClient,
    holder: int,
    open_one: Callable[[], Awaitable[T]],
) -> tuple[list[T], T]:
    """Open streams until one lands on process `holder` (the hash always picks the same
    process for a job; least_conn alternates): all of them, and that one."""
    counts = await deployment.open_streams(http)
    opened: list[T] = []
    while len(opened) < 8:
        opened.append(await open_one())
        now = await placed(deployment, http, sum(counts) + 1)
        if now[holder] > counts[holder]:
            return opened, opened[-1]
        counts = now
    raise AssertionError("nginx never put a stream on the process holding the job's")


def keep_publishing(settings: Settings, jobs: list[str], stop: threading.Event) -> None:
    pub = publisher(settings)
    i = 0
    while not stop.wait(0.01):
        pub.publish(EventDraft(job_id=jobs[i % len(jobs)], status=JobStatus.PROGRESS, message="p"))
        i += 1
    pub.redis.close()


async def resume(port: int, path: str, last_event_id: str | None) -> RawStream:
    """Resume as EventSource does, through nginx, up to the end of the stream. A resume
    that reaches the stopping process (over one of nginx's kept-alive connections, before
    that process closed them) gets a stream it ends at once, empty: it is opened again."""
    for _ in range(50):
        stream = await RawStream.connect(port, path, last_event_id=last_event_id)
        assert await stream.read_head() == 200
        await stream.read_to_end()
        if stream.record.events:
            return stream
        await stream.close()
    raise AssertionError("every resume ended empty")


async def test_sigterm_of_the_process_holding_streams_resumes_them_on_the_other(
    deployment: Deployment, settings: Settings
) -> None:
    jobs = [uuid.uuid4().hex, uuid.uuid4().hex]
    path = f"/api/v1/jobs/{jobs[0]}/events"
    pub = publisher(settings)
    for job in jobs:
        pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    stop = threading.Event()
    ticker = threading.Thread(target=keep_publishing, args=(settings, jobs, stop))
    async with httpx.AsyncClient(timeout=10) as http:
        # On the process that will get the SIGTERM: a job stream and a watch stream of
        # the project's client, and a raw SSE reader of the job (it sees every byte).
        streamer = Follower(deployment.url)
        streamer.follow(streamer.client.events(jobs[0]))
        holder = (await placed(deployment, http, 1)).index(1)

        async def watch() -> Follower:
            watcher = Follower(deployment.url)
            watcher.follow(watcher.client.watch(jobs))
            return watcher

        async def raw_stream() -> tuple[RawStream, asyncio.Task[list[SSEEvent]]]:
            raw = await RawStream.connect(deployment.port, path)
            assert await raw.read_head() == 200
            return raw, asyncio.create_task(raw.read_to_end())

        watchers, on_holder = await open_until_on(deployment, http, holder, watch)
        raws, (raw, raw_reader) = await open_until_on(deployment, http, holder, raw_stream)
        followers = [streamer, *watchers]
        ticker.start()
        try:
            await until(lambda: all(len(f.events) >= 3 for f in followers), WITHIN, "live")
            deployment.webs[holder].terminate()
            await asyncio.wait_for(raw_reader, WITHIN)  # its process ended the response
            resumed_reader = asyncio.create_task(resume(deployment.port, path, raw.last_event_id))
            code = await asyncio.to_thread(deployment.webs[holder].process.wait, WITHIN)
            moved = [streamer, on_holder]
            before = [len(f.events) for f in moved]
            await until(
                lambda: all(len(f.events) > n for f, n in zip(moved, before, strict=True)),
                WITHIN,
                "events after the resume",
            )
        finally:
            stop.set()
            ticker.join()
        for job in jobs:
            pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
        for follower in followers:
            await follower.finish()
        resumed = await asyncio.wait_for(resumed_reader, WITHIN)
        for _, reader in raws[:-1]:
            await asyncio.wait_for(reader, WITHIN)
        pub.redis.close()

        assert code in (0, -signal.SIGTERM), deployment.webs[holder].log()[-3000:]
        for follower in followers:
            for job in jobs if follower is not streamer else jobs[:1]:
                assert contiguous(follower.seqs(job)), (job, follower.seqs(job))
                assert [e for e in follower.events if e.job_id == job][-1].status == "success"
        for follower in followers:
            assert len(follower.requests) == (2 if follower in moved else 1), follower.requests
        for follower in moved:
            assert follower.requests[1].headers.get("last-event-id"), "resumed without its id"
        # On the wire: the cut response ended cleanly, and the two together hold every
        # seq once, up to the terminal.
        assert raw.ended and resumed.ended
        wire = seqs_of(raw.record.events) + seqs_of(resumed.record.events)
        assert contiguous(wire), wire
        assert status_of(resumed.record.events[-1]) == "success"
        for other, _ in raws[:-1]:
            assert other.ended and status_of(other.record.events[-1]) == "success"
            await other.close()
        await raw.close()
        await resumed.close()

        # After the terminal, a resume with the last id is told there is nothing more.
        answer = await http.get(
            deployment.url + path, headers={"Last-Event-ID": str(streamer.seqs(jobs[0])[-1])}
        )
        assert answer.status_code == 204
        cursor = ".".join(str(on_holder.seqs(job)[-1]) for job in jobs)
        answer = await http.get(str(on_holder.requests[-1].url), headers={"Last-Event-ID": cursor})
        assert answer.status_code == 204
        live = 1 - holder
        assert (await deployment.webs[live].metrics(http))["progress_open_streams"] == 0


async def test_each_client_behind_nginx_counts_on_its_own(
    nginx: str, settings: Settings, tmp_path: Path
) -> None:
    """The file's X-Forwarded-For with PROGRESS_TRUSTED_PROXIES: the per-client stream cap
    counts the browser's address, not nginx's (the job's streams share one process
    through the affinity, so one process's cap is what is tested). Without the setting,
    the third stream gets `503` as well."""
    job = uuid.uuid4().hex
    pub = publisher(settings)
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    path = f"/api/v1/jobs/{job}/events"
    deployment = Deployment(settings, tmp_path, affinity=True, PROGRESS_MAX_STREAMS_PER_CLIENT="1")
    streams: list[RawStream] = []
    try:

        async def status_as(address: str) -> int:
            headers = {"X-Forwarded-For": address}
            streams.append(await RawStream.connect(deployment.port, path, headers=headers))
            return await streams[-1].read_head()

        assert await status_as("198.51.100.1") == 200
        assert await status_as("198.51.100.1") == 503  # its one stream is open
        assert await status_as("198.51.100.2") == 200  # another client, through the same nginx
    finally:
        for stream in streams:
            await stream.close()
        print(deployment.logs())
        deployment.stop()
        pub.redis.close()
