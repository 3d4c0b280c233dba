"""The family sweeper: brings open parent jobs up to date from their children's snapshots.

The lease sweeper (`sweeper.py`) calls it on every pass in every web process. It reads
the index of open parents (`KeySpace.families`) for those due a check (each is checked
once per `PROGRESS_LEASE_SECONDS`) and, per parent:

- re-applies each unfinished child's snapshot (idempotent), so a child event whose
  parent update was lost (the process died between the two calls) still counts;
- counts a child whose state Redis lost as failed (`StateLost`), so a parent whose
  children are all lost ends, never hangs;
- finishes a cancel a process died in the middle of, and gives the children a parent's
  end left unfinished their one `revoked` if that was cut short;
- flushes held progress, and forgets parents that have ended.
"""

from __future__ import annotations

import logging
import time

from progress_streamer.protocol.connections import AsyncRedis
from progress_streamer.protocol.event import MalformedEvent, decode_event
from progress_streamer.protocol.family_update import STATE_LOST_CHILD, ChildUpdate
from progress_streamer.protocol.keys import StateField, is_valid_job_id
from progress_streamer.protocol.publisher import AsyncPublisher
from progress_streamer.protocol.status import TERMINAL, JobStatus

log = logging.getLogger(__name__)

ENDED = {"s", "f", "v"}


class FamilySweeper:
    """One pass over the due parents (`sweep_once`); see the module docstring."""

    def __init__(self, publisher: AsyncPublisher, *, batch: int = 50) -> None:
        self.publisher = publisher
        self.redis: AsyncRedis = publisher.redis
        self.keyspace = publisher.keyspace
        self.settings = publisher.settings
        self.batch = batch

    async def sweep_once(self) -> int:
        """Check every due parent; return how many were checked."""
        now = time.time()
        due = await self.redis.zrangebyscore(
            self.keyspace.families, "-inf", now, start=0, num=self.batch
        )
        for raw in due:
            parent_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            await self.check(parent_id)
        return len(due)

    async def check(self, parent_id: str) -> None:
        if not is_valid_job_id(parent_id):
            await self.redis.zrem(self.keyspace.families, parent_id)
            return
        family = self.keyspace.family(parent_id)
        ids_raw, cancel = await self.redis.hmget(family, ["ids", "cancel"])  # type: ignore[misc]
        status = await self.redis.hget(self.keyspace.job(parent_id).state, StateField.STATUS)  # type: ignore[misc]
        if ids_raw is None:
            await self.redis.zrem(self.keyspace.families, parent_id)
            return
        ids = ids_raw.decode().split(",")
        if status is not None and JobStatus(status.decode()) in TERMINAL:
            await self._finish_revokes(family, ids)
            await self.redis.zrem(self.keyspace.families, parent_id)
            return
        drivers = self.publisher.families
        if cancel is not None and time.time() - float(cancel) > self.settings.lease_seconds:
            await drivers.cancel(parent_id)  # the process cancelling it died midway
            return
        for child_id in await self._unfinished(family, ids):
            update = await self._child_state(family, child_id)
            if update is not None:
                await drivers.apply(parent_id, update)
        await drivers.flush(parent_id)
        next_check = time.time() + self.settings.lease_seconds
        await self.redis.zadd(self.keyspace.families, {parent_id: next_check}, xx=True)

    async def _unfinished(self, family: str, ids: list[str]) -> list[str]:
        classes = await self.redis.hmget(family, [f"c:{i}" for i in ids])  # type: ignore[misc]
        return [i for i, c in zip(ids, classes, strict=True) if (c or b"p").decode() not in ENDED]

    async def _child_state(self, family: str, child_id: str) -> ChildUpdate | None:
        """The child's snapshot as an update; a `StateLost` failure when Redis lost it."""
        raw = await self.redis.hget(self.keyspace.job(child_id).state, StateField.EVENT)  # type: ignore[misc]
        if raw is None:
            last = await self.redis.hget(family, f"s:{child_id}")  # type: ignore[misc]
            seq = int(last or 0) + 1
            return ChildUpdate(job_id=child_id, seq=seq, status="failure", error=STATE_LOST_CHILD)
        try:
            return ChildUpdate.of_event(decode_event(raw))
        except MalformedEvent:
            log.warning("job %s: its snapshot is not an event; the sweeper skips it", child_id)
            return None

    async def _finish_revokes(self, family: str, ids: list[str]) -> None:
        """Children the parent's end counted as revoked but that never got their event."""
        classes = await self.redis.hmget(family, [f"c:{i}" for i in ids])  # type: ignore[misc]
        for child_id, c in zip(ids, classes, strict=True):
            if c != b"v":
                continue
            status = await self.redis.hget(self.keyspace.job(child_id).state, StateField.STATUS)  # type: ignore[misc]
            if status is not None and JobStatus(status.decode()) not in TERMINAL:
                await self.publisher.families.revoke_children([child_id], "cancelled")
