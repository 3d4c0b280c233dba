"""The read side of a job's state: its snapshot, and the retained events after a seq.

Used by the web app to replay before streaming live, and to catch clients up after the
shared subscription reconnects. One atomic script call, so a publish never lands between
reading the snapshot and reading the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio

from progress_streamer.protocol.event import ProgressEvent, decode_event
from progress_streamer.protocol.keys import JobKeys, StateField
from progress_streamer.protocol.scripts import READ_SINCE
from progress_streamer.protocol.status import JobStatus


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What a client missed: either the retained events after its seq, or the snapshot."""

    seq: int  # the job's latest seq
    status: JobStatus  # the job's latest status
    snapshot: ProgressEvent  # the latest event
    events: tuple[ProgressEvent, ...]  # to send, in seq order
    from_snapshot: bool  # True: the client's seq was absent, too old or ahead

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def epoch(self) -> int:
        """The incarnation of the job's state these events belong to."""
        return self.snapshot.epoch


def catch_up_of(reply: list[Any]) -> CatchUp | None:
    if not reply:
        return None
    seq, status, mode, snapshot_raw, raw_events = reply
    snapshot = decode_event(snapshot_raw)
    from_snapshot = mode in (b"snapshot", "snapshot")
    events = (snapshot,) if from_snapshot else tuple(decode_event(e) for e in raw_events)
    return CatchUp(
        seq=int(seq),
        status=JobStatus(status.decode() if isinstance(status, bytes) else status),
        snapshot=snapshot,
        events=events,
        from_snapshot=from_snapshot,
    )


class JobReader:
    """Reads jobs' state for the web app (asyncio)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.redis = client
        self._read = client.register_script(READ_SINCE)

    async def events_since(self, keys: JobKeys, after: int | None) -> CatchUp | None:
        """None for an unknown job. `after=None` asks for the snapshot."""
        reply = await self._read(keys=[keys.state, keys.history], args=[_after(after)])
        return catch_up_of(reply)

    async def snapshot(self, keys: JobKeys) -> ProgressEvent | None:
        raw: bytes | None = await self.redis.hget(keys.state, StateField.EVENT)  # type: ignore[misc]
        return None if raw is None else decode_event(raw)


class SyncJobReader:
    """The same reads for synchronous code (tests, Celery-side tools)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._read = client.register_script(READ_SINCE)

    def events_since(self, keys: JobKeys, after: int | None) -> CatchUp | None:
        return catch_up_of(self._read(keys=[keys.state, keys.history], args=[_after(after)]))

    def snapshot(self, keys: JobKeys) -> ProgressEvent | None:
        raw = cast("bytes | None", self.redis.hget(keys.state, StateField.EVENT))
        return None if raw is None else decode_event(raw)


def _after(after: int | None) -> int:
    return -1 if after is None or after < 0 else min(after, 2**53)
