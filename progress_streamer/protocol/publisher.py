"""The publisher: every event goes to Redis in one atomic round trip of the publish script.

`Publisher` (sync, for Celery tasks) and `AsyncPublisher` (asyncio, for ARQ and the web
app's own writes such as `pending` and `revoked`) share `publish_call`, the one place
that turns a draft into the script's keys and arguments. redis-py's registered scripts
run EVALSHA and reload the script when Redis lost its script cache. An accepted event of
a child job then updates its parent job (`families`, protocol/family_update.py): a
second script call, in the parent's slot.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

from progress_streamer.protocol.connections import AsyncRedis, SyncRedis, ascript, script
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.failover import athrough_failover, through_failover
from progress_streamer.protocol.family_update import AsyncFamilyDriver, ChildUpdate, FamilyDriver
from progress_streamer.protocol.incarnation import SeenState, state_lost_draft
from progress_streamer.protocol.keys import JobKeys, KeySpace
from progress_streamer.protocol.scripts import TOUCH_LEASE, publish_script
from progress_streamer.protocol.settings import Settings


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    """What the script said: accepted with a `seq`, or refused with a reason."""

    accepted: bool
    seq: int
    attempt: int = 0
    reason: str | None = None  # 'terminal', 'illegal_transition', 'state_lost', ...
    epoch: int = 0  # when accepted: the incarnation of the job's state it went into
    parent: str | None = None  # when accepted: the job's parent job, if it is a child

    @property
    def seen(self) -> SeenState | None:
        """What to pass as `seen` with the job's next publish (None when refused)."""
        return SeenState(epoch=self.epoch, seq=self.seq) if self.accepted else None


@dataclass(frozen=True, slots=True)
class PublishCall:
    keys: list[str]
    args: list[bytes | str | int | float]


def publish_call(
    keys: JobKeys,
    draft: EventDraft,
    settings: Settings,
    *,
    condition: str = "",
    lease_seconds: float | None = None,
    seen: SeenState | None = None,
    token: str | None = None,
) -> PublishCall:
    """The script's KEYS and ARGV for one draft (raises before anything is sent).

    `seen` is the job's state as this publisher last saw it (`PublishOutcome.seen`): if
    it is gone, the loss wins (protocol/incarnation.py) and this draft is refused.
    `token` makes the call idempotent (scripts.py). On a Redis Cluster each call gets a
    fresh random one by default, made in-process: redis-py's cluster client sends a
    command again after a connection error (a failover), and the repeat gets the first
    answer instead of a second event. On one Redis, where redis-py does not resend, the
    default is none, and the script does exactly what it did before (no extra work)."""
    if not draft.ts:
        draft = replace(draft, ts=round(time.time(), 6))
    head, tail = draft.encode(settings.max_event_bytes)
    return PublishCall(
        keys=[keys.state, keys.history, keys.file, keys.channel],
        args=[
            head,
            tail,
            draft.status.value,
            "" if draft.attempt is None else draft.attempt,
            "" if draft.percent is None else repr(float(draft.percent)),
            settings.history,
            settings.job_ttl,
            condition,
            "" if lease_seconds is None else lease_seconds,
            "" if seen is None else seen.epoch,
            "" if seen is None else seen.seq,
            (os.urandom(8).hex() if settings.cluster else "") if token is None else token,
        ],
    )


def outcome_of(reply: list[Any]) -> PublishOutcome:
    if int(reply[0]) == 1:
        parent = reply[4] if len(reply) > 4 else b""
        return PublishOutcome(
            accepted=True,
            seq=int(reply[1]),
            attempt=int(reply[2]),
            epoch=int(reply[3]),
            parent=(parent.decode() if isinstance(parent, bytes) else str(parent)) or None,
        )
    reason = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
    return PublishOutcome(accepted=False, seq=int(reply[2]), reason=reason)


def lease_deadline(reply: Any) -> float | None:
    return None if reply is None or reply is False else float(reply)


class Publisher:
    """Publishes from synchronous code (Celery tasks and signals)."""

    def __init__(self, client: SyncRedis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.keyspace = KeySpace(settings.key_prefix)
        self._cluster = settings.cluster
        self._publish = script(client, publish_script(settings.cluster))
        self._touch = script(client, TOUCH_LEASE)
        self.families = FamilyDriver(self)  # a child's accepted event updates its parent

    def publish(
        self,
        draft: EventDraft,
        *,
        condition: str = "",
        lease_seconds: float | None = None,
        seen: SeenState | None = None,
    ) -> PublishOutcome:
        call = publish_call(
            self.keyspace.job(draft.job_id),
            draft,
            self.settings,
            condition=condition,
            lease_seconds=lease_seconds,
            seen=seen,
        )
        if self._cluster:  # safe to send again: the call carries its token
            reply = through_failover(lambda: self._publish(call.keys, call.args))
        else:
            reply = self._publish(keys=call.keys, args=call.args)
        outcome = outcome_of(reply)
        if outcome.parent is not None:
            self.families.child_published(outcome.parent, ChildUpdate.of_draft(draft, outcome.seq))
        return outcome

    def touch_lease(self, job_id: str, attempt: int) -> float | None:
        """Extend the lease and index it for the sweeper; None once the job is over.
        On a cluster, both steps are sent again through a failover (both are idempotent)."""
        if self._cluster:
            return through_failover(lambda: self._touch_lease(job_id, attempt))
        return self._touch_lease(job_id, attempt)

    def _touch_lease(self, job_id: str, attempt: int) -> float | None:
        keys = self.keyspace.job(job_id)
        deadline = lease_deadline(
            self._touch(keys=[keys.state], args=[attempt, self.settings.lease_seconds])
        )
        if deadline is None:
            self.redis.zrem(self.keyspace.leases, job_id)
        else:
            self.redis.zadd(self.keyspace.leases, {job_id: deadline})
        return deadline


class AsyncPublisher:
    """Publishes from asyncio code (ARQ jobs, the web app, the sweeper)."""

    def __init__(self, client: AsyncRedis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.keyspace = KeySpace(settings.key_prefix)
        self._cluster = settings.cluster
        self._publish = ascript(client, publish_script(settings.cluster))
        self._touch = ascript(client, TOUCH_LEASE)
        self.families = AsyncFamilyDriver(self)  # a child's accepted event updates its parent

    async def publish(
        self,
        draft: EventDraft,
        *,
        condition: str = "",
        lease_seconds: float | None = None,
        seen: SeenState | None = None,
    ) -> PublishOutcome:
        call = publish_call(
            self.keyspace.job(draft.job_id),
            draft,
            self.settings,
            condition=condition,
            lease_seconds=lease_seconds,
            seen=seen,
        )
        if self._cluster:  # safe to send again: the call carries its token
            reply = await athrough_failover(lambda: self._publish(call.keys, call.args))
        else:
            reply = await self._publish(keys=call.keys, args=call.args)
        outcome = outcome_of(reply)
        if outcome.parent is not None:
            update = ChildUpdate.of_draft(draft, outcome.seq)
            await self.families.child_published(outcome.parent, update)
        return outcome

    async def report_lost(self, job_id: str, seen: SeenState) -> PublishOutcome:
        """A stream's report that the job's state it saw is gone (the loss wins): marks
        the job lost, or ends the incarnation that replaced it with `StateLost`; refused
        with 'not_lost' when the state is still the one seen."""
        draft = state_lost_draft(job_id, None)
        return await self.publish(draft, condition="lost", seen=seen)

    async def touch_lease(self, job_id: str, attempt: int) -> float | None:
        if self._cluster:
            return await athrough_failover(lambda: self._touch_lease(job_id, attempt))
        return await self._touch_lease(job_id, attempt)

    async def _touch_lease(self, job_id: str, attempt: int) -> float | None:
        keys = self.keyspace.job(job_id)
        reply = await self._touch(keys=[keys.state], args=[attempt, self.settings.lease_seconds])
        deadline = lease_deadline(reply)
        if deadline is None:
            await self.redis.zrem(self.keyspace.leases, job_id)
        else:
            await self.redis.zadd(self.keyspace.leases, {job_id: deadline})
        return deadline
