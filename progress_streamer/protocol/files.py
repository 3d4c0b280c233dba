"""Files a job attaches for download, stored in Redis beside the job's state.

The worker writes with `attach_file` (sync; Celery) and the web app reads with
`read_file` (asyncio). One hash per job, `KeySpace.job(id).file`, with the fields
`name`, `content_type` and `data`, expiring with the job (the publish script refreshes
its TTL on every event), so any web process can serve it whatever host the worker ran on.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio

from progress_streamer.protocol.keys import FileField, KeySpace
from progress_streamer.protocol.settings import Settings

MAX_NAME_CHARS = 255


class FileTooLarge(ValueError):
    """A file over `PROGRESS_MAX_FILE_BYTES`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredFile:
    """An attached file as the web app serves it."""

    name: str
    content_type: str
    data: bytes


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
    client: redis.Redis,
    settings: Settings,
    job_id: str,
    name: str,
    data: bytes,
    content_type: str = "application/octet-stream",
) -> None:
    """Store (or replace) the job's file, with the job's TTL; raises `FileTooLarge`."""
    check_file(name, data, content_type, settings.max_file_bytes)
    key = KeySpace(settings.key_prefix).job(job_id).file
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=file_fields(name, data, content_type))
        pipe.expire(key, settings.job_ttl)
        pipe.execute()


def file_fields(name: str, data: bytes, content_type: str) -> dict[str, str | bytes]:
    """The file hash's fields, as both writers (sync for Celery, asyncio for ARQ) store them."""
    return {FileField.NAME: name, FileField.CONTENT_TYPE: content_type, FileField.DATA: bytes(data)}


async def read_file(
    client: redis.asyncio.Redis, keyspace: KeySpace, job_id: str
) -> StoredFile | None:
    """The job's attached file, or None when it has none (or it expired)."""
    key = keyspace.job(job_id).file
    fields: dict[bytes, bytes] = await client.hgetall(key)  # type: ignore[misc]
    data = fields.get(FileField.DATA.encode())
    if data is None:
        return None
    name = fields.get(FileField.NAME.encode(), b"download")
    content_type = fields.get(FileField.CONTENT_TYPE.encode(), b"application/octet-stream")
    return StoredFile(
        name=name.decode("utf-8", "replace"),
        content_type=content_type.decode("utf-8", "replace"),
        data=data,
    )
