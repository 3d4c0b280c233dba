"""Files a job attaches for download, stored in Redis beside the job's state.

The worker writes with `attach_file` (sync; Celery) or `aattach_file` (ARQ), in one
script call (one slot: it works on a Redis Cluster), and the web app reads with
`file_info` and `read_chunks` (asyncio). One hash per job, `KeySpace.job(id).file`, with
the fields `name`, `content_type`, `size`, `chunks` and the data in pieces of
`CHUNK_BYTES` (`chunk:0`, `chunk:1`, ...), expiring with the job (the publish script
refreshes its TTL on every event), so any web process can serve it whatever host the
worker ran on, and a download holds one piece in memory at a time, not the whole file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from progress_streamer.protocol.connections import AsyncRedis, SyncRedis, ascript, script
from progress_streamer.protocol.keys import FileField, KeySpace
from progress_streamer.protocol.scripts import WRITE_HASH, write_hash_args
from progress_streamer.protocol.settings import Settings

MAX_NAME_CHARS = 255
CHUNK_BYTES = 64 * 1024  # what a download reads from Redis and writes to the socket at once


class FileTooLarge(ValueError):
    """A file over `PROGRESS_MAX_FILE_BYTES`."""


class FileChanged(RuntimeError):
    """The file's pieces vanished during a download (it expired, or was replaced)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredFile:
    """An attached file's description, as the web app serves it."""

    name: str
    content_type: str
    size: int
    chunks: int


def check_file(name: str, data: bytes, content_type: str, max_bytes: int) -> None:
    """Refuse, with a clear message, what could not be served safely or is over the bound."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"file data must be bytes, not {type(data).__name__}")
    if len(data) > max_bytes:
        raise FileTooLarge(
            f"the file {name!r} is {len(data)} bytes, over the {max_bytes}-byte limit "
            "(PROGRESS_MAX_FILE_BYTES)"
        )
    _check_text("file name", name)
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"file name {name!r} must be a bare name, without a directory")
    _check_text("content type", content_type)


def _check_text(what: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_NAME_CHARS} chars")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {value!r} must not contain control characters")


def attach_file(
    client: SyncRedis,
    settings: Settings,
    job_id: str,
    name: str,
    data: bytes,
    content_type: str = "application/octet-stream",
) -> None:
    """Store (or replace) the job's file, with the job's TTL; raises `FileTooLarge`."""
    keys, args = _file_write(settings, job_id, name, data, content_type)
    script(client, WRITE_HASH)(keys=keys, args=args)


async def aattach_file(
    client: AsyncRedis,
    settings: Settings,
    job_id: str,
    name: str,
    data: bytes,
    content_type: str = "application/octet-stream",
) -> None:
    """`attach_file` for asyncio code (ARQ jobs)."""
    keys, args = _file_write(settings, job_id, name, data, content_type)
    await ascript(client, WRITE_HASH)(keys=keys, args=args)


def _file_write(
    settings: Settings, job_id: str, name: str, data: bytes, content_type: str
) -> tuple[list[str], list[str | bytes | int]]:
    """The checked file as the one-slot write script's keys and arguments."""
    check_file(name, data, content_type, settings.max_file_bytes)
    key = KeySpace(settings.key_prefix).job(job_id).file
    fields = file_fields(name, data, content_type)
    return [key], write_hash_args(settings.job_ttl, fields, replace=True)


def file_fields(name: str, data: bytes, content_type: str) -> dict[str, str | bytes | int]:
    """The file hash's fields, as both writers (sync for Celery, asyncio for ARQ) store them:
    the data in `CHUNK_BYTES` pieces, so a download reads one piece at a time."""
    view = memoryview(bytes(data))
    fields: dict[str, str | bytes | int] = {
        FileField.NAME: name,
        FileField.CONTENT_TYPE: content_type,
        FileField.SIZE: len(view),
        FileField.CHUNKS: chunk_count(len(view)),
    }
    for index in range(chunk_count(len(view))):
        fields[chunk_field(index)] = bytes(view[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES])
    return fields


def chunk_count(size: int) -> int:
    return -(-size // CHUNK_BYTES)


def chunk_field(index: int) -> str:
    return f"{FileField.CHUNK_PREFIX}{index}"


async def file_info(client: AsyncRedis, keyspace: KeySpace, job_id: str) -> StoredFile | None:
    """The job's attached file's name, type and size (not its data), or None."""
    key = keyspace.job(job_id).file
    fields = [FileField.NAME, FileField.CONTENT_TYPE, FileField.SIZE, FileField.CHUNKS]
    name, content_type, size, chunks = await client.hmget(key, fields)  # type: ignore[misc]
    if size is None or chunks is None:
        return None
    return StoredFile(
        name=(name or b"download").decode("utf-8", "replace"),
        content_type=(content_type or b"application/octet-stream").decode("utf-8", "replace"),
        size=int(size),
        chunks=int(chunks),
    )


async def read_chunks(
    client: AsyncRedis, keyspace: KeySpace, job_id: str, stored: StoredFile
) -> AsyncIterator[bytes]:
    """The file's data, one chunk per Redis read; `FileChanged` if it vanished meanwhile."""
    key = keyspace.job(job_id).file
    for index in range(stored.chunks):
        chunk: bytes | None = await client.hget(key, chunk_field(index))  # type: ignore[misc]
        if chunk is None:
            raise FileChanged(f"job {job_id}'s file expired or was replaced during a download")
        yield chunk


async def read_file(client: AsyncRedis, keyspace: KeySpace, job_id: str) -> bytes | None:
    """The whole file's data, or None when it has none (for tests and small tools)."""
    stored = await file_info(client, keyspace, job_id)
    if stored is None:
        return None
    return b"".join([chunk async for chunk in read_chunks(client, keyspace, job_id, stored)])
