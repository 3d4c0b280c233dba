"""Faults around the production web process (issue 6, items 4, 7 and 10).

- Redis frozen with SIGSTOP (the socket stays open): /readyz says 503 within its bound,
  the JSON API answers 503 rather than hanging or 500, the hub's PING deadline notices;
  after SIGCONT the watched job's terminal arrives and nothing leaks. Then Redis is
  restarted (AOF on): the hub reconnects and streams go on.
- More streams than the cap: 503 too_many_streams with Retry-After, the API still answers.
- SIGTERM with 500 open streams: the process exits within PROGRESS_SHUTDOWN_SECONDS, and
  every client resumes on a new process with Last-Event-ID, losing and repeating nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer, free_port
from progress_streamer.web.app import REDIS_TIMEOUT
from progress_streamer.web.streaming.hub import HEALTH_SECONDS, READ_TIMEOUT
from tests.support.reliability import (
    Blackhole,
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

SLACK = 3.0  # scheduling noise on a busy 2-core machine


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), appendonly=True, directory=str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


async def _status(http: httpx.AsyncClient, url: str) -> int:
    try:
        return (await http.get(url, timeout=REDIS_TIMEOUT + 5)).status_code
    except httpx.TimeoutException:
        return 0


async def test_a_frozen_then_restarted_redis(aof_redis: RedisServer, tmp_path: Path) -> None:
    settings = Settings(redis_url=aof_redis.url, key_prefix="f", auth="none")
    job, later = uuid.uuid4().hex, uuid.uuid4().hex
    pub = publisher(settings)
    for j in (job, later):
        pub.publish(EventDraft(job_id=j, status=JobStatus.STARTED))
    pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=10.0))
    assert aof_redis.process is not None
    redis_pid = aof_redis.process.pid
    figures: dict[str, float] = {}
    with web_process(settings) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
            stream = await RawStream.connect(web.port, f"/api/v1/jobs/{job}/events")
            await stream.read_head()
            assert seqs_of(await stream.events()) == [2]
            reading = asyncio.create_task(stream.read_to_end())

            os.kill(redis_pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                figures |= await _while_frozen(web, http, settings, job, stopped)
                # The worker publishes while Redis is frozen: it blocks, then goes through.
                blocked = threading.Thread(target=_finish, args=(settings, job))
                blocked.start()
            finally:
                os.kill(redis_pid, signal.SIGCONT)
            resumed = time.monotonic()
            await asyncio.wait_for(reading, 2 * HEALTH_SECONDS + SLACK)
            figures["terminal_after_sigcont_s"] = time.monotonic() - resumed
            blocked.join(10)
            await until(lambda: _is(http, "/readyz", 200), 10, "/readyz 200")
            figures["ready_after_sigcont_s"] = time.monotonic() - resumed
            got = seqs_of(stream.record.events)
            assert got == [2, 3, 4, 5], got
            assert status_of(stream.record.events[-1]) == "success"
            await stream.close()
            figures |= await _restart(web, http, aof_redis, settings, later)
            await _nothing_left(web, http, settings)
            log = web.log()
    pub.redis.close()
    report("redis/sigstop-and-restart", **{k: round(v, 2) for k, v in figures.items()})
    assert "Traceback" not in log, log[-3000:]


async def _while_frozen(
    web: WebProcess, http: httpx.AsyncClient, settings: Settings, job: str, stopped: float
) -> dict[str, float]:
    """What the process says while Redis neither answers nor closes its sockets."""
    not_ready = await until(lambda: _is(http, "/readyz", 503), 5, "/readyz 503")
    # Concurrently: the JSON API (its command times out), a new stream (its SUBSCRIBE
    # is never confirmed), and the hub's own PING deadline.
    status_started = time.monotonic()
    status_task = asyncio.create_task(_status(http, f"/api/v1/jobs/{job}"))
    stream_task = asyncio.create_task(_status(http, f"/api/v1/jobs/{job}/events"))

    async def hub_noticed() -> bool:
        return (await web.metrics(http))["progress_redis_reconnects_total"] >= 1

    detect_bound = 2 * HEALTH_SECONDS + 2 * READ_TIMEOUT + SLACK
    await until(hub_noticed, detect_bound, "the hub noticed the frozen Redis")
    detected = time.monotonic() - stopped
    assert await status_task == 503
    status_answered = time.monotonic() - status_started
    assert await stream_task == 503
    assert status_answered < REDIS_TIMEOUT + SLACK
    assert detected < detect_bound
    return {
        "readyz_503_after_s": not_ready,
        "api_503_after_s": status_answered,
        "hub_detected_after_s": detected,
    }


async def _is(http: httpx.AsyncClient, url: str, status: int) -> bool:
    return await _status(http, url) == status


def _finish(settings: Settings, job: str) -> None:
    local = publisher(settings)
    local.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=50.0))
    local.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=90.0))
    local.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
    local.redis.close()


async def _restart(
    web: WebProcess, http: httpx.AsyncClient, server: RedisServer, settings: Settings, job: str
) -> dict[str, float]:
    """Kill Redis and start it again on the same port and data (AOF) mid-stream."""
    stream = await RawStream.connect(web.port, f"/api/v1/jobs/{job}/events")
    await stream.read_head()
    assert seqs_of(await stream.events()) == [1]
    server.stop()
    down = time.monotonic()
    server.start()
    restarted = time.monotonic()
    _finish(settings, job)
    events = await asyncio.wait_for(stream.read_to_end(), 15)
    recovered = time.monotonic() - restarted
    await stream.close()
    assert seqs_of(events) == [1, 2, 3, 4]
    assert (await web.metrics(http))["progress_redis_reconnects_total"] >= 2
    return {"restart_down_s": restarted - down, "terminal_after_restart_s": recovered}


async def _nothing_left(web: WebProcess, http: httpx.AsyncClient, settings: Settings) -> None:
    async def idle() -> bool:
        m = await web.metrics(http)
        return m["progress_open_streams"] == 0 and m["progress_watched_jobs"] == 0

    await until(idle, 10, "streams closed")
    client = redis.Redis.from_url(settings.redis_url)
    try:
        assert client.pubsub_channels(f"{settings.key_prefix}:*") == []
        hubs = [
            c for c in client.client_list() if c["name"] == f"progress-hub-{settings.key_prefix}"
        ]
        assert len(hubs) == 1, hubs
    finally:
        client.close()


async def test_a_silently_dead_network_path_to_redis(settings: Settings) -> None:
    """Half-open TCP (RPY-05): bytes vanish, no FIN, no RST, even on new connections.

    After the path is back, the hub must be on a fresh connection: its PING deadline drops
    the dead one, and a reconnect attempt made during the outage must not hang for good
    in its handshake.
    """
    port = int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    job = uuid.uuid4().hex
    pub = publisher(settings)
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    figures: dict[str, float] = {}
    with Blackhole(port) as path, web_process(settings.replace(redis_url=path.url)) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
            stream = await RawStream.connect(web.port, f"/api/v1/jobs/{job}/events")
            await stream.read_head()
            assert seqs_of(await stream.events()) == [1]
            reading = asyncio.create_task(stream.read_to_end())
            # Counted from the cut: the hub may try again before the test sees its metric.
            accepted = path.accepted
            path.cut()
            cut = time.monotonic()
            pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=20.0))

            async def hub_noticed() -> bool:
                return (await web.metrics(http))["progress_redis_reconnects_total"] >= 1

            await until(hub_noticed, 2 * HEALTH_SECONDS + 2 * READ_TIMEOUT + SLACK)
            figures["hub_detected_after_s"] = time.monotonic() - cut
            await until(lambda: path.accepted > accepted, 5, "a reconnect attempt in the cut")
            path.restore()
            restored = time.monotonic()
            pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
            bound = 2 * HEALTH_SECONDS + SLACK
            await asyncio.wait_for(reading, bound)
            figures["terminal_after_restore_s"] = time.monotonic() - restored
            await stream.close()
            assert seqs_of(stream.record.events) == [1, 2, 3]
            log = web.log()
    pub.redis.close()
    report("redis/half-open-path", **{k: round(v, 2) for k, v in figures.items()})
    assert "Traceback" not in log, log[-3000:]


# -- overload --------------------------------------------------------------------------

CAP = 200


async def test_more_streams_than_the_cap_get_503_while_the_api_answers(
    settings: Settings,
) -> None:
    raise_open_files()
    job = uuid.uuid4().hex
    pub = publisher(settings)
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    pub.redis.close()
    env = {"PROGRESS_MAX_STREAMS": str(CAP), "PROGRESS_MAX_STREAMS_PER_CLIENT": "5000"}
    path = f"/api/v1/jobs/{job}/events"
    with web_process(settings, **env) as web:
        attempts = [RawStream.connect(web.port, path) for _ in range(CAP + 100)]
        streams = await asyncio.gather(*attempts)
        await asyncio.gather(*(s.read_head() for s in streams))
        accepted = [s for s in streams if s.status == 200]
        refused = [s for s in streams if s.status != 200]
        async with httpx.AsyncClient(base_url=web.url, timeout=10) as http:
            started = time.monotonic()
            api = [
                await http.get(f"/api/v1/jobs/{job}"),
                await http.get("/readyz"),
                await http.get("/metrics"),
            ]
            api_seconds = time.monotonic() - started
            bodies = [json.loads(await s.next_chunk() or b"{}") for s in refused]
            for s in streams:
                await s.close()

            async def released() -> bool:
                return (await web.metrics(http))["progress_open_streams"] == 0

            await until(released, 10, "every slot released")
            again = await RawStream.connect(web.port, path)
            assert await again.read_head() == 200
            await again.close()
    report(
        "overload/cap",
        cap=CAP,
        attempted=len(streams),
        accepted=len(accepted),
        refused=len(refused),
        api_answered_in_s=round(api_seconds, 3),
    )
    assert len(accepted) == CAP and len(refused) == 100
    for s, body in zip(refused, bodies, strict=True):
        assert s.status == 503 and s.headers["retry-after"].isdigit()
        assert s.headers["content-type"] == "application/json"
        assert body["error"]["code"] == "too_many_streams"
    assert [r.status_code for r in api] == [200, 200, 200]
    assert api_seconds < 3


# -- SIGTERM ---------------------------------------------------------------------------

STREAMS = 500
JOBS = 50
SHUTDOWN_SECONDS = 3


async def test_sigterm_with_500_streams_then_every_client_resumes_elsewhere(
    settings: Settings,
) -> None:
    raise_open_files()
    jobs = [uuid.uuid4().hex for _ in range(JOBS)]
    pub = publisher(settings)
    for j in jobs:
        pub.publish(EventDraft(job_id=j, status=JobStatus.STARTED))
    stop = threading.Event()

    def keep_publishing() -> None:
        local = publisher(settings)
        i = 0
        while not stop.wait(0.002):
            local.publish(EventDraft(job_id=jobs[i % JOBS], status=JobStatus.PROGRESS, message="p"))
            i += 1
        local.redis.close()

    env = {
        "PROGRESS_SHUTDOWN_SECONDS": str(SHUTDOWN_SECONDS),
        "PROGRESS_MAX_STREAMS_PER_CLIENT": "5000",
    }
    ticker = threading.Thread(target=keep_publishing)
    ticker.start()
    first = WebProcess(settings, graceful=SHUTDOWN_SECONDS, **env)
    try:
        first.wait_ready()
        streams = await asyncio.gather(
            *(
                RawStream.connect(first.port, f"/api/v1/jobs/{jobs[i % JOBS]}/events")
                for i in range(STREAMS)
            )
        )
        assert {await s.read_head() for s in streams} == {200}
        await asyncio.gather(*(s.events() for s in streams))
        readers = [asyncio.create_task(s.read_to_end()) for s in streams]
        first.terminate()
        signalled = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*readers), SHUTDOWN_SECONDS + SLACK)
        streams_ended = time.monotonic() - signalled
        exit_code = await asyncio.to_thread(first.process.wait, SHUTDOWN_SECONDS + 10)
        exited = time.monotonic() - signalled
        first_log = first.log()
        for s in streams:
            await s.close()
    finally:
        first.stop()
    assert all(s.ended and s.record.raw.endswith(b"\n\n") for s in streams)
    try:
        with web_process(settings, **env) as second:
            resumed = await asyncio.gather(
                *(
                    RawStream.connect(
                        second.port,
                        f"/api/v1/jobs/{jobs[i % JOBS]}/events",
                        last_event_id=s.last_event_id,
                    )
                    for i, s in enumerate(streams)
                )
            )
            assert {await s.read_head() for s in resumed} == {200}
            readers = [asyncio.create_task(s.read_to_end()) for s in resumed]
            stop.set()
            ticker.join()
            for j in jobs:
                pub.publish(EventDraft(job_id=j, status=JobStatus.SUCCESS))
            await asyncio.wait_for(asyncio.gather(*readers), 30)
            for s in resumed:
                await s.close()
    finally:
        stop.set()
        ticker.join()
        pub.redis.close()
    gaps = 0
    for before, after in zip(streams, resumed, strict=True):
        seen = seqs_of(before.record.events) + seqs_of(after.record.events)
        gaps += seen != list(range(seen[0], seen[0] + len(seen)))
        assert seen == list(range(seen[0], seen[0] + len(seen))), seen
        assert status_of(after.record.events[-1]) == "success"
    report(
        "shutdown/sigterm-500",
        streams=STREAMS,
        shutdown_seconds=SHUTDOWN_SECONDS,
        streams_ended_after_s=round(streams_ended, 2),
        process_exited_after_s=round(exited, 2),
        exit_code=exit_code,
        events_before=sum(len(s.record.events) for s in streams),
        events_after_resume=sum(len(s.record.events) for s in resumed),
    )
    assert exit_code in (0, -signal.SIGTERM), first_log[-3000:]
    assert exited < SHUTDOWN_SECONDS + SLACK, first_log[-3000:]
    assert "Traceback" not in first_log, first_log[-3000:]
