"""Redis restarted empty while a job runs (issue 14, item 3): the loss wins, for everyone.

A private redis-server is killed and started again without its data on the same port,
after an outage of 0.2 to 3 s, at four points of a job: after its `pending`, after
`started`, mid-progress, and just before its `success`. The job's worker then goes on
as a Celery worker would (the integration's own signal handlers and running attempt, in
this process: a broker on the same Redis would have lost the task message too). Two
viewers follow the job on its own stream and two on a watch (with a second job nobody
publishes again). Every viewer must end with `StateLost` at once, and agree with the
others, with the status endpoint and with a new viewer; a resume with any id a viewer
saw gets that outcome or `204`, never a silent skip; the worker's later events are
refused.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from progress_streamer.celery import signals
from progress_streamer.celery.runtime import runtime
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer, free_port
from tests.support.reliability import report, until
from tests.support.server import ServerThread, open_sse, publisher, running_server

pytestmark = pytest.mark.slow

OUTAGES = (0.2, 0.5, 1.0, 2.0, 3.0)
# How many of the job's steps (pending, started, 3 x progress, success) ran before it.
POINTS = {"after pending": 1, "after started": 2, "mid-progress": 4, "before success": 5}
STEPS = 6
ENDS_WITHIN = 10.0  # seconds from Redis being back to every viewer's end (hub back-off 2 s)


class FlakyRedis:
    """A redis-server on a fixed port that can be killed and started again, empty."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = str(directory)
        self.server = RedisServer(port=self.port, directory=self.directory)
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    async def outage(self, seconds: float) -> None:
        self.server.stop()
        await asyncio.sleep(seconds)  # the outage itself, not a wait for something
        self.server = RedisServer(port=self.port, directory=self.directory)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


class CeleryJob:
    """One job's life through the Celery integration's handlers, without a broker: the
    sender's `before_task_publish` (whose headers travel to the worker in the message),
    then the pool child's prerun, progress reports and success."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.headers: dict[str, Any] = {"id": job_id, "retries": 0}
        self.task = SimpleNamespace(request=SimpleNamespace(id=job_id, retries=0))
        self.done = 0

    def run(self, until_step: int) -> None:
        while self.done < until_step:
            self._step(self.done)
            self.done += 1

    def _step(self, step: int) -> None:
        attempt = runtime.attempt_of(self.job_id)
        if step == 0:
            signals.on_before_task_publish(sender="tests.sim", headers=self.headers)
            vars(self.task.request).update(self.headers)  # the message reaches the worker
        elif step == 1:
            signals.on_task_prerun(task_id=self.job_id, task=self.task)
        elif attempt is not None and attempt.refused:
            return  # ProgressTask does not run a refused attempt (Ignore); postrun ends it
        elif step < STEPS - 1:
            attempt.throttle.report(None, 25.0 * (step - 1), None, None, None)  # type: ignore[union-attr]
            attempt.flush()  # type: ignore[union-attr]
        else:
            signals.on_task_success(sender=self.task, result={"ok": True})
        if step == STEPS - 1:
            signals.on_task_postrun(task_id=self.job_id, state="SUCCESS")


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[FlakyRedis]:
    redis_server = FlakyRedis(tmp_path)
    try:
        yield redis_server
    finally:
        redis_server.stop()


async def follow(client: httpx.AsyncClient, url: str, got: list[dict[str, Any]]) -> None:
    async with open_sse(client, url) as (stream, events):
        assert stream.response.status_code == 200
        async for event in events:
            got.append(json.loads(event.data))


def outcome_of(events: list[dict[str, Any]], job: str) -> tuple[str, str | None]:
    """The viewer's last event of `job`, after checking its history is one incarnation,
    contiguous, ended by its own `StateLost` one past its last seq."""
    mine = [e for e in events if e["job_id"] == job]
    assert mine, f"nothing of {job}"
    *before, last = mine
    seqs = [e["seq"] for e in mine]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert len({e.get("epoch") for e in before}) <= 1, "events of two incarnations mixed"
    error = last["error"]
    return last["status"], None if error is None else error["type"]


async def get_json(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """GET, retried while Redis is still coming back (503)."""
    deadline = time.monotonic() + 10
    while (response := await client.get(url)).status_code == 503:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.05)
    return response


async def check_everyone_agrees(
    server: ServerThread, job: str, other: str, viewers: list[list[dict[str, Any]]]
) -> None:
    lost = ("failure", "StateLost")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        status = (await get_json(client, f"/api/v1/jobs/{job}")).json()
        assert (status["status"], status["error"]["type"]) == lost
        assert (await get_json(client, f"/api/v1/jobs/{other}")).status_code == 404
        fresh: list[dict[str, Any]] = []
        await follow(client, f"/api/v1/jobs/{job}/events", fresh)
        assert [outcome_of(fresh, job)] == [lost]
        last_seen = max(e["seq"] for v in viewers for e in v if e["job_id"] == job)
        for seq in range(1, last_seen + 1):  # every id a viewer held, its StateLost's too
            headers = {"Last-Event-ID": str(seq)}
            resumed: list[dict[str, Any]] = []
            async with open_sse(client, f"/api/v1/jobs/{job}/events", headers=headers) as (
                stream,
                events,
            ):
                if stream.response.status_code == 204:
                    continue
                resumed += [json.loads(e.data) async for e in events]
            assert [(e["status"], e["error"]["type"]) for e in resumed] == [lost], seq


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("outage", OUTAGES)
async def test_after_redis_lost_a_running_job_every_viewer_is_told_state_lost(
    flaky: FlakyRedis, outage: float, point: str
) -> None:
    settings = Settings(
        redis_url=flaky.url, key_prefix=f"s{uuid.uuid4().hex[:8]}", auth="none", throttle_ms=50
    )
    runtime.configure(settings)
    job, other = uuid.uuid4().hex, uuid.uuid4().hex
    celery_job = CeleryJob(job)
    celery_job.run(POINTS[point])
    pub = publisher(settings)
    pub.publish(EventDraft(job_id=other, status=JobStatus.STARTED))
    viewers: list[list[dict[str, Any]]] = [[] for _ in range(4)]
    try:
        with running_server(settings) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                body = {"jobs": [{"job_id": j, "token": None} for j in (job, other)]}
                watch = (await client.post("/api/v1/watches", json=body)).json()["events_url"]
                urls = [f"/api/v1/jobs/{job}/events"] * 2 + [watch] * 2
                tasks = [
                    asyncio.create_task(follow(client, u, v))
                    for u, v in zip(urls, viewers, strict=True)
                ]
                await until(lambda: all(viewers[:2]) and all(len(v) >= 2 for v in viewers[2:]), 10)
                await flaky.outage(outage)
                back = time.monotonic()
                runtime.redis.connection_pool.disconnect()
                await asyncio.to_thread(celery_job.run, STEPS)
                async with asyncio.timeout(ENDS_WITHIN):
                    await asyncio.gather(*tasks)
                ended = time.monotonic() - back
            outcomes = {outcome_of(v, job) for v in viewers}
            assert outcomes == {("failure", "StateLost")}, outcomes
            assert {outcome_of(v, other) for v in viewers[2:]} == {("failure", "StateLost")}
            await check_everyone_agrees(server, job, other, viewers)
        history = pub.redis.lrange(pub.keyspace.job(job).history, 0, -1)
        assert len(history) == 1  # the stored StateLost: every later event was refused
        report(
            "state_loss",
            outage=outage,
            point=point,
            viewers_ended_after_s=round(ended, 2),
            rechecks=server.services.metrics.rechecks._value.get(),
        )
    finally:
        pub.redis.close()
        runtime.close()
