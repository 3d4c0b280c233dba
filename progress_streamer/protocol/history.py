"""The read side of a job's state: its snapshot, and the retained events after a seq.

Used by the web app to replay before streaming live, and to catch clients up after the
shared subscription reconnects. One atomic script call, so a publish never lands between
reading the snapshot and reading the history. State this service did not write (a
snapshot or history entry that is not an event, a key of the wrong type) raises
`CorruptState`, never a decoding error or a Redis error that reads like an outage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import NoScriptError, ResponseError

from progress_streamer.protocol.connections import AsyncRedis, SyncRedis, ascript, script
from progress_streamer.protocol.event import MalformedEvent, ProgressEvent, decode_event
from progress_streamer.protocol.keys import JobKeys, StateField
from progress_streamer.protocol.scripts import READ_SINCE
from progress_streamer.protocol.status import JobStatus


class CorruptState(RuntimeError):
    """A job's state in Redis that this service cannot read: not written by it. Its
    text is safe to answer; `detail` (the parser's words) is for the log."""

    def __init__(self, what: str, why: str, detail: str = "") -> None:
        super().__init__(f"{what} in Redis is unreadable ({why})")
        self.detail = detail


def is_wrong_type(exc: BaseException) -> bool:
    """Redis's answer to a command on a key of another type (inside a script too)."""
    return isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc)


@contextmanager
def state_of_job() -> Iterator[None]:
    """Turn what a job's unreadable state raises into `CorruptState`."""
    try:
        yield
    except MalformedEvent as exc:
        raise CorruptState("the state of this job", "not an event", str(exc)) from None
    except ResponseError as exc:
        if is_wrong_type(exc):
            raise CorruptState("the state of this job", "a key of the wrong type") from None
        raise


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What a client missed: either the retained events after its seq, or the snapshot."""

    seq: int  # the job's latest seq
    status: JobStatus  # the job's latest status
    snapshot: ProgressEvent  # the latest event
    events: tuple[ProgressEvent, ...]  # to send, in seq order
    from_snapshot: bool  # True: the client's seq was absent, too old or ahead
    # The incarnation of the job's state, from its hash (not from the events: an older
    # publisher's events carry none, and that must not read as a lost state).
    epoch: int

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


def catch_up_of(reply: list[Any]) -> CatchUp | None:
    if not reply:
        return None
    seq, status, mode, snapshot_raw, raw_events, epoch = reply
    if int(seq) < 1:
        raise MalformedEvent("the seq field is not a number")
    epoch_text = epoch.decode("ascii", "replace") if isinstance(epoch, bytes) else str(epoch)
    if not (epoch_text.isascii() and epoch_text.isdigit()) or len(epoch_text) > 16:
        raise MalformedEvent("the epoch field is not a number")
    snapshot = decode_event(snapshot_raw)
    from_snapshot = mode in (b"snapshot", "snapshot")
    events = (snapshot,) if from_snapshot else tuple(decode_event(e) for e in raw_events)
    try:
        latest = JobStatus(status.decode() if isinstance(status, bytes) else status)
    except (AttributeError, ValueError) as exc:
        raise MalformedEvent(f"bad status field: {exc}") from None
    return CatchUp(
        seq=int(seq),
        status=latest,
        snapshot=snapshot,
        events=events,
        from_snapshot=from_snapshot,
        epoch=int(epoch_text),
    )


class JobReader:
    """Reads jobs' state for the web app (asyncio)."""

    def __init__(self, client: AsyncRedis) -> None:
        self.redis = client
        self._read = ascript(client, READ_SINCE)

    async def events_since(self, keys: JobKeys, after: int | None) -> CatchUp | None:
        """None for an unknown job. `after=None` asks for the snapshot."""
        with state_of_job():
            try:
                reply = await self._read(keys=[keys.state, keys.history], args=[_after(after)])
            except NoScriptError:
                # A replica promoted by a failover starts with no scripts, and redis-py's
                # cluster client loads one on the primaries its map knows, which may not
                # include it yet: EVAL goes by the keys, and leaves the script cached there.
                after_arg = str(_after(after))
                reply = await self.redis.eval(READ_SINCE, 2, keys.state, keys.history, after_arg)  # type: ignore[misc]
            return catch_up_of(reply)

    async def snapshot(self, keys: JobKeys) -> ProgressEvent | None:
        with state_of_job():
            raw: bytes | None = await self.redis.hget(keys.state, StateField.EVENT)  # type: ignore[misc]
            return None if raw is None else decode_event(raw)


class SyncJobReader:
    """The same reads for synchronous code (tests, Celery-side tools)."""

    def __init__(self, client: SyncRedis) -> None:
        self.redis = client
        self._read = script(client, READ_SINCE)

    def events_since(self, keys: JobKeys, after: int | None) -> CatchUp | None:
        with state_of_job():
            reply = self._read(keys=[keys.state, keys.history], args=[_after(after)])
            return catch_up_of(reply)

    def snapshot(self, keys: JobKeys) -> ProgressEvent | None:
        with state_of_job():
            raw = cast("bytes | None", self.redis.hget(keys.state, StateField.EVENT))
            return None if raw is None else decode_event(raw)


def _after(after: int | None) -> int:
    return -1 if after is None or after < 0 else min(after, 2**53)
