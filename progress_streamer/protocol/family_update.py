"""Drives a parent job from its children's events: `FamilyDriver` (sync) and its asyncio twin.

The order, per child event (a parent and its child may live in different cluster slots):

    1. the child's publish script (child's slot) accepts the event and, from the child's
       state hash, returns its `parent` link (written by `record_family`);
    2. the publisher that got the answer calls the family script (parent's slot) with the
       child's id, seq, status, percent, step, result and error; the script applies it
       once (idempotent by (child id, child seq)), updates the counts and the children's
       percent sum in O(1) and, when the parent's view changed, publishes the parent's
       event through the publish script's own code, in the same atomic call;
    3. when the parent is itself a child (a nested canvas), its accepted event drives its
       own parent the same way.

Why nothing is lost if a process dies between 1 and 2: the update carries the child's
latest state, not a delta, so the child's next event brings the parent up to date; and
the family sweeper (`family_sweeper.py`, in every web process) re-derives each unfinished
child of each open parent from the child's snapshot, so a lost last (terminal) event is
applied within one sweep. Re-applying is harmless: an event already applied is ignored.

Parent progress is throttled in the script (`PROGRESS_THROTTLE_MS`): a held change is
flushed by a timer here, by the next child event, or by the sweeper. A parent's status
changes and its end are never held. Children a parent's end leaves unfinished (a
`fail_fast` group's, a chain's after a failed link, a cancel's) get one `revoked` each,
published here, and the publisher's `revoke_tasks` hook (Celery: a revoke broadcast)
stops the ones running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio

from progress_streamer.protocol.connections import ascript, script
from progress_streamer.protocol.event import EventDraft, ProgressEvent
from progress_streamer.protocol.family_script import family_script
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus

if TYPE_CHECKING:
    from progress_streamer.protocol.publisher import AsyncPublisher, Publisher, PublishOutcome

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
ENDED_WITH_PARENT = "cancelled: its parent job ended"
STATE_LOST_CHILD = '{"type":"StateLost","message":"Redis lost this child\'s state"}'
_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildUpdate:
    """What the family script needs of one child event, as the script's arguments."""

    job_id: str
    seq: int
    status: str
    percent: str = ""  # '' = the event carried none
    step: str = ""  # as JSON; '' = none
    result: str = "null"  # as JSON
    error: str = ""  # as JSON; '' = none

    @classmethod
    def of_draft(cls, draft: EventDraft, seq: int) -> ChildUpdate:
        error = None if draft.error is None else draft.error.as_dict()
        return cls._of(draft.job_id, seq, draft.status, draft.percent, draft.step,
                       draft.result, error)  # fmt: skip

    @classmethod
    def of_event(cls, event: ProgressEvent) -> ChildUpdate:
        error = None if event.error is None else event.error.as_dict()
        return cls._of(event.job_id, event.seq, event.status, event.percent, event.step,
                       event.result, error)  # fmt: skip

    @classmethod
    def _of(
        cls, job_id: str, seq: int, status: JobStatus, percent: float | None,
        step: str | None, result: Any, error: dict[str, str] | None,
    ) -> ChildUpdate:  # fmt: skip
        return cls(
            job_id=job_id,
            seq=seq,
            status=status.value,
            percent="" if percent is None else repr(float(percent)),
            step="" if step is None else _json.encode(step),
            result=_json.encode(result) if status is JobStatus.SUCCESS else "null",
            error="" if error is None else _json.encode(error),
        )

    def args(self) -> list[str | int]:
        return [self.job_id, self.seq, self.status, self.percent, self.step, self.result,
                self.error]  # fmt: skip


@dataclass(frozen=True, slots=True)
class FamilyReply:
    """The family script's answer (see its header in family_script.py)."""

    what: str
    number: float
    link: str | None
    revoke: list[str]
    as_child: ChildUpdate | None  # the parent's emitted event, to drive `link` with

    @property
    def emitted(self) -> bool:
        return self.what == "emitted"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def reply_of(parent_id: str, raw: list[Any]) -> FamilyReply:
    what = _text(raw[0])
    link = _text(raw[2]) if len(raw) > 2 and raw[2] else None
    revoke = [_text(r) for r in raw[3]] if len(raw) > 3 else []
    as_child = None
    if what == "emitted":
        status, percent, step, result, error = (_text(r) for r in raw[4:9])
        as_child = ChildUpdate(
            job_id=parent_id, seq=int(raw[1]), status=status, percent=percent,
            step="" if step == "null" else step, result=result,
            error="" if error == "null" else error,
        )  # fmt: skip
    return FamilyReply(what, float(_text(raw[1]) or 0), link, revoke, as_child)


def family_call(
    keyspace: KeySpace, settings: Settings, op: str, parent_id: str, extra: list[Any]
) -> tuple[list[str], list[Any]]:
    """The family script's KEYS and ARGV for `op` on `parent_id`."""
    keys = keyspace.job(parent_id)
    return (
        [keys.state, keys.history, keys.file, keys.channel, keyspace.family(parent_id)],
        [op, parent_id, settings.history, settings.job_ttl, settings.max_event_bytes,
         settings.throttle_ms / 1000, *extra],
    )  # fmt: skip


def cancelled_outcome(reply: FamilyReply) -> PublishOutcome:
    from progress_streamer.protocol.publisher import PublishOutcome

    if reply.emitted:
        return PublishOutcome(accepted=True, seq=int(reply.number))
    return PublishOutcome(accepted=False, seq=int(reply.number), reason="terminal")


class FamilyDriver:
    """Applies child events to parents from synchronous code (Celery workers and the
    web app's Celery runner); owned by a `Publisher`."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self._script = script(publisher.redis, family_script(publisher.settings.cluster))
        self._lock = threading.Lock()
        self._timers: dict[str, threading.Timer] = {}
        self.revoke_tasks: Callable[[list[str]], None] | None = None

    def _call(self, op: str, parent_id: str, extra: list[Any]) -> FamilyReply:
        p = self.publisher
        keys, args = family_call(p.keyspace, p.settings, op, parent_id, extra)
        return reply_of(parent_id, self._script(keys=keys, args=args))

    def child_published(self, parent_id: str, update: ChildUpdate) -> None:
        """Step 2 (and 3) of the module docstring; a Redis error is logged, not raised
        (the family sweeper re-applies the child's state)."""
        try:
            self._drive("child", parent_id, update.args())
        except (redis.RedisError, OSError) as exc:
            log.warning("job %s: parent %s not updated (the sweeper will): %s",
                        update.job_id, parent_id, exc)  # fmt: skip

    def flush(self, parent_id: str) -> None:
        with self._lock:
            self._timers.pop(parent_id, None)
        try:
            self._drive("flush", parent_id, [])
        except (redis.RedisError, OSError) as exc:
            log.warning("parent %s: held progress not flushed: %s", parent_id, exc)

    def _drive(self, op: str, parent_id: str, extra: list[Any]) -> FamilyReply:
        reply = first = self._call(op, parent_id, extra)
        while True:
            self._after(parent_id, reply)
            if not reply.emitted or reply.link is None or reply.as_child is None:
                return first
            parent_id = reply.link
            reply = self._call("child", parent_id, reply.as_child.args())

    def _after(self, parent_id: str, reply: FamilyReply) -> None:
        if reply.revoke:
            self.revoke_children(reply.revoke, ENDED_WITH_PARENT)
        if reply.what == "held" and reply.number > 0:
            self._schedule_flush(parent_id, reply.number)

    def _schedule_flush(self, parent_id: str, delay: float) -> None:
        with self._lock:
            if parent_id in self._timers:
                return
            timer = threading.Timer(delay + 0.005, self.flush, args=(parent_id,))
            timer.daemon = True
            self._timers[parent_id] = timer
        timer.start()

    def cancel(self, parent_id: str) -> PublishOutcome:
        """Revoke every unfinished child (one `revoked` each), then the parent."""
        reply = self._call("cancel", parent_id, [])
        if reply.what != "cancelling":
            return cancelled_outcome(reply)
        self.revoke_children(reply.revoke, CANCELLED)
        return cancelled_outcome(self._drive("cancelled", parent_id, []))

    def revoke_children(self, job_ids: list[str], message: str) -> None:
        """One `revoked` per child (a nested parent is cancelled as a family), then the
        `revoke_tasks` hook for the ones that may be running."""
        for job_id in job_ids:
            if self.publisher.redis.exists(self.publisher.keyspace.family(job_id)):
                self.cancel(job_id)
            else:
                self.publisher.publish(
                    EventDraft(job_id=job_id, status=JobStatus.REVOKED, message=message)
                )
        if self.revoke_tasks is not None and job_ids:
            try:
                self.revoke_tasks(job_ids)
            except Exception as exc:
                log.warning("children revoked, but stopping their tasks failed: %s", exc)

    def close(self) -> None:
        with self._lock:
            timers, self._timers = list(self._timers.values()), {}
        for timer in timers:
            timer.cancel()


class AsyncFamilyDriver:
    """`FamilyDriver` for asyncio code (ARQ workers, the web app, the sweepers)."""

    def __init__(self, publisher: AsyncPublisher) -> None:
        self.publisher = publisher
        self._script = ascript(publisher.redis, family_script(publisher.settings.cluster))
        self._flushes: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.revoke_tasks: Callable[[list[str]], Any] | None = None

    async def _call(self, op: str, parent_id: str, extra: list[Any]) -> FamilyReply:
        p = self.publisher
        keys, args = family_call(p.keyspace, p.settings, op, parent_id, extra)
        return reply_of(parent_id, await self._script(keys=keys, args=args))

    async def child_published(self, parent_id: str, update: ChildUpdate) -> None:
        try:
            await self._drive("child", parent_id, update.args())
        except (redis.RedisError, OSError) as exc:
            log.warning("job %s: parent %s not updated (the sweeper will): %s",
                        update.job_id, parent_id, exc)  # fmt: skip

    async def apply(self, parent_id: str, update: ChildUpdate) -> FamilyReply:
        """Apply one child state (the sweeper's re-derivation); raises Redis errors."""
        return await self._drive("child", parent_id, update.args())

    async def flush(self, parent_id: str) -> None:
        self._flushes.pop(parent_id, None)
        try:
            await self._drive("flush", parent_id, [])
        except (redis.RedisError, OSError) as exc:
            log.warning("parent %s: held progress not flushed: %s", parent_id, exc)

    async def _drive(self, op: str, parent_id: str, extra: list[Any]) -> FamilyReply:
        reply = first = await self._call(op, parent_id, extra)
        while True:
            await self._after(parent_id, reply)
            if not reply.emitted or reply.link is None or reply.as_child is None:
                return first
            parent_id = reply.link
            reply = await self._call("child", parent_id, reply.as_child.args())

    async def _after(self, parent_id: str, reply: FamilyReply) -> None:
        if reply.revoke:
            await self.revoke_children(reply.revoke, ENDED_WITH_PARENT)
        if reply.what == "held" and reply.number > 0 and parent_id not in self._flushes:
            loop = asyncio.get_running_loop()
            self._flushes[parent_id] = loop.call_later(
                reply.number + 0.005, self._start_flush, parent_id
            )

    def _start_flush(self, parent_id: str) -> None:
        task = asyncio.ensure_future(self.flush(parent_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel(self, parent_id: str) -> PublishOutcome:
        reply = await self._call("cancel", parent_id, [])
        if reply.what != "cancelling":
            return cancelled_outcome(reply)
        await self.revoke_children(reply.revoke, CANCELLED)
        return cancelled_outcome(await self._drive("cancelled", parent_id, []))

    async def revoke_children(self, job_ids: list[str], message: str) -> None:
        for job_id in job_ids:
            if await self.publisher.redis.exists(self.publisher.keyspace.family(job_id)):
                await self.cancel(job_id)
            else:
                await self.publisher.publish(
                    EventDraft(job_id=job_id, status=JobStatus.REVOKED, message=message)
                )
        if self.revoke_tasks is not None and job_ids:
            try:
                result = self.revoke_tasks(job_ids)
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:
                log.warning("children revoked, but stopping their tasks failed: %s", exc)

    def close(self) -> None:
        for handle in self._flushes.values():
            handle.cancel()
        self._flushes.clear()
