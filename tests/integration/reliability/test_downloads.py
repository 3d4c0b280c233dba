"""Attached-file downloads under abuse (issue 14, item 6): memory stays bounded.

60 concurrent downloads of a 10 MB attachment once took the production web process from
244 MB to 1,473 MB (each read whole into memory, then copied). Now the file is streamed
from Redis a chunk at a time: the process stays within its baseline + 64 MiB during the
attack and returns to its baseline afterwards, and a client that stops reading is cut off
after PROGRESS_SEND_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import httpx
import pytest
import redis

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.files import attach_file
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from tests.support.reliability import WebProcess, report, until, web_process
from tests.support.server import publisher

pytestmark = pytest.mark.slow

FILE_BYTES = 10 * 1024 * 1024
DOWNLOADS = 60
MEMORY_BOUND_KB = 64 * 1024
SETTLE_TOLERANCE_KB = 24 * 1024  # allocator noise: arenas are not handed back at once


def finished_job_with_file(settings: Settings, sync_redis: redis.Redis, data: bytes) -> str:
    job = uuid.uuid4().hex
    pub = publisher(settings)
    try:
        pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
        attach_file(sync_redis, settings, job, "big.bin", data)
        pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result={"ok": True}))
    finally:
        pub.redis.close()
    return job


async def slow_download(client: httpx.AsyncClient, url: str) -> str:
    """Read the body in small pieces, pausing, so every download overlaps the others."""
    digest = hashlib.sha256()
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        async for piece in response.aiter_bytes(256 * 1024):
            digest.update(piece)
            await asyncio.sleep(0.01)  # pacing the reader, not synchronisation
    return digest.hexdigest()


async def sample_peak(web: WebProcess, stop: asyncio.Event) -> int:
    peak = web.rss_kb()
    while not stop.is_set():
        peak = max(peak, web.rss_kb())
        await asyncio.sleep(0.02)
    return peak


async def test_60_concurrent_10mb_downloads_stay_within_baseline_plus_64_mib(
    settings: Settings, sync_redis: redis.Redis
) -> None:
    data = bytes(range(256)) * (FILE_BYTES // 256)
    job = finished_job_with_file(settings.replace(job_ttl=600), sync_redis, data)
    url = f"/api/v1/jobs/{job}/result"
    limits = httpx.Limits(max_connections=DOWNLOADS + 5)
    with web_process(settings) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=120, limits=limits) as client:
            assert await slow_download(client, url) == hashlib.sha256(data).hexdigest()
            baseline = web.rss_kb()
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_peak(web, stop))
            started = time.monotonic()
            digests = await asyncio.gather(*(slow_download(client, url) for _ in range(DOWNLOADS)))
            elapsed = time.monotonic() - started
            stop.set()
            peak = await sampler
            await until(lambda: web.rss_kb() <= baseline + SETTLE_TOLERANCE_KB, 10, "settled")
            settled = web.rss_kb()
    report(
        "downloads",
        baseline_kb=baseline,
        peak_kb=peak,
        settled_kb=settled,
        downloads=DOWNLOADS,
        seconds=round(elapsed, 2),
    )
    assert set(digests) == {hashlib.sha256(data).hexdigest()}
    assert peak - baseline <= MEMORY_BOUND_KB, (baseline, peak)
    assert settled - baseline <= SETTLE_TOLERANCE_KB, (baseline, settled)


async def test_a_download_that_stops_reading_is_cut_off_after_the_send_timeout(
    settings: Settings, sync_redis: redis.Redis
) -> None:
    data = b"x" * FILE_BYTES
    job = finished_job_with_file(settings.replace(job_ttl=600), sync_redis, data)
    with web_process(settings, PROGRESS_SEND_TIMEOUT="2") as web:
        reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
        writer.write(f"GET /api/v1/jobs/{job}/result HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        await writer.drain()
        started = time.monotonic()
        await asyncio.sleep(4)  # the attack: a client that reads nothing for 4 s
        received = 0
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 20):
            received += len(chunk)
        closed_after = time.monotonic() - started
        writer.close()
    report("stalled download", received=received, closed_after_s=round(closed_after, 2))
    assert received < FILE_BYTES  # the server gave up before sending it all
    assert closed_after < 20
