"""Attached files: stored with the job's TTL and size bound, read back by the web side."""

from __future__ import annotations

import uuid

import pytest
import redis
import redis.asyncio

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.files import (
    CHUNK_BYTES,
    FileTooLarge,
    StoredFile,
    attach_file,
    file_info,
    read_file,
)
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus

# Each test runs on one Redis and again on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.both_redis_modes


async def test_a_file_round_trips_with_the_jobs_ttl(
    sync_redis: redis.Redis,
    async_redis: redis.asyncio.Redis,
    settings: Settings,
    keyspace: KeySpace,
) -> None:
    job = uuid.uuid4().hex
    settings = settings.replace(job_ttl=600)
    attach_file(sync_redis, settings, job, "a.csv", b"x,y\r\n", "text/csv")
    attach_file(sync_redis, settings, job, "report.csv", b"a,b\r\n1,2\r\n", "text/csv")

    stored = await file_info(async_redis, keyspace, job)

    assert stored == StoredFile(name="report.csv", content_type="text/csv", size=10, chunks=1)
    assert await read_file(async_redis, keyspace, job) == b"a,b\r\n1,2\r\n"
    assert 590 <= sync_redis.ttl(keyspace.job(job).file) <= 600
    Publisher(sync_redis, settings.replace(job_ttl=900)).publish(
        EventDraft(job_id=job, status=JobStatus.STARTED)
    )
    assert sync_redis.ttl(keyspace.job(job).file) > 600  # every event refreshes it


async def test_no_file_reads_as_none(async_redis: redis.asyncio.Redis, keyspace: KeySpace) -> None:
    assert await read_file(async_redis, keyspace, uuid.uuid4().hex) is None


def test_a_file_over_the_bound_is_refused_and_not_stored(
    sync_redis: redis.Redis, settings: Settings, keyspace: KeySpace
) -> None:
    job = uuid.uuid4().hex
    with pytest.raises(FileTooLarge, match="PROGRESS_MAX_FILE_BYTES"):
        attach_file(sync_redis, settings.replace(max_file_bytes=10), job, "f.bin", b"x" * 11)
    assert not sync_redis.exists(keyspace.job(job).file)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("../etc/passwd", "text/plain"), ("", "text/plain"), ("a\nb", "text/plain"),
     ("ok.txt", "text/plain\r\nX-Evil: 1")],
)  # fmt: skip
def test_names_and_types_that_cannot_be_served_safely_are_refused(
    sync_redis: redis.Redis, settings: Settings, name: str, content_type: str
) -> None:
    with pytest.raises(ValueError):
        attach_file(sync_redis, settings, uuid.uuid4().hex, name, b"x", content_type)


async def test_a_large_file_is_stored_in_chunks_and_read_back_whole(
    sync_redis: redis.Redis,
    async_redis: redis.asyncio.Redis,
    settings: Settings,
    keyspace: KeySpace,
) -> None:
    job = uuid.uuid4().hex
    data = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # two chunks and a bit
    attach_file(sync_redis, settings, job, "big.bin", data)
    stored = await file_info(async_redis, keyspace, job)
    assert stored is not None and (stored.size, stored.chunks) == (len(data), 3)
    assert await read_file(async_redis, keyspace, job) == data
