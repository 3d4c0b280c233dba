"""A parent job and its children: the plan (group, chain or chord) and how it is recorded.

A parent job is an ordinary job whose events come from its children (SPEC.md, "Groups").
`record_family` writes, before anything is sent: the family hash in the parent's slot
(kind, `fail_fast`, the ordered child ids, per-child index and task name, the counts),
the parent's `pending` event (with `children`, so `total` is right from the first
event), each child's `pending` event, and then each child's `parent` link on its own
state hash (a second call, in the child's slot). From then on every accepted child event
updates the parent through the family script (`family_update.py`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.keys import InvalidJobId, KeySpace, StateField, is_valid_job_id
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus

if TYPE_CHECKING:
    from progress_streamer.protocol.publisher import AsyncPublisher, Publisher


class FamilyKind(StrEnum):
    """How a parent's children run, and so how its percent and end are computed."""

    GROUP = "group"  #: in parallel; success when all succeed
    CHAIN = "chain"  #: one after another; the last link's result
    CHORD = "chord"  #: a group, then a callback (the last child); the callback's result


class InvalidFamily(ValueError):
    """A plan that cannot be recorded (too many children, a bad or repeated id, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildPlan:
    """One child: its job id and its task's name (a chain's `step` when it reports none)."""

    job_id: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilyPlan:
    """A parent job and its ordered children; for a chord the callback is the last child."""

    parent_id: str
    kind: FamilyKind
    children: tuple[ChildPlan, ...]
    fail_fast: bool = False
    runner: str | None = None  # which runner cancels it (`StateField.RUNNER`)

    @property
    def child_ids(self) -> list[str]:
        return [child.job_id for child in self.children]

    def check(self, max_children: int) -> None:
        """`InvalidFamily` with the reason, or nothing."""
        ids = [self.parent_id, *self.child_ids]
        bad = next((i for i in ids if not is_valid_job_id(i)), None)
        if bad is not None:
            raise InvalidFamily(f"invalid job id {bad!r}")
        if len(set(ids)) != len(ids):
            raise InvalidFamily("a job id appears twice in the family")
        least = 2 if self.kind is FamilyKind.CHORD else 1
        if len(self.children) < least:
            raise InvalidFamily(f"a {self.kind} needs at least {least} child(ren)")
        if len(self.children) > max_children:
            raise InvalidFamily(
                f"{len(self.children)} children is over the limit of {max_children} "
                "(PROGRESS_MAX_CHILDREN)"
            )


def family_fields(plan: FamilyPlan) -> dict[str, Any]:
    """The family hash as `record_family` writes it (fields read by family_script.py)."""
    fields: dict[str, Any] = {
        "kind": plan.kind.value,
        "ff": int(plan.fail_fast),
        "n": len(plan.children),
        "ids": ",".join(plan.child_ids),
        "p": len(plan.children),
        "r": 0,
        "s": 0,
        "f": 0,
        "v": 0,
        "sum": 0,
        "shown": 0,
        "emit_at": 0,
        "dirty": 0,
    }
    if plan.kind is FamilyKind.CHORD:
        fields["cb"] = plan.children[-1].job_id
    for index, child in enumerate(plan.children, start=1):
        fields[f"i:{child.job_id}"] = index
        fields[f"name:{index}"] = child.name
    return fields


def children_counts(total: int) -> dict[str, int]:
    """The `children` field of a parent none of whose children has started."""
    return {"total": total, "pending": total, "running": 0, "succeeded": 0, "failed": 0,
            "revoked": 0}  # fmt: skip


def parent_pending(plan: FamilyPlan) -> EventDraft:
    total = len(plan.children)
    return EventDraft(
        job_id=plan.parent_id,
        status=JobStatus.PENDING,
        percent=0.0,
        current=0,
        total=total,
        children=children_counts(total),
    )


def _pending(job_ids: Iterable[str]) -> list[EventDraft]:
    return [EventDraft(job_id=job_id, status=JobStatus.PENDING) for job_id in job_ids]


def _writes(plan: FamilyPlan, settings: Settings) -> list[tuple[str, str, dict[str, Any]]]:
    """(key, 'family'|'link', fields) for every hash `record_family` writes."""
    keyspace = KeySpace(settings.key_prefix)
    parent_state: dict[str, Any] = {}
    if plan.runner is not None:
        parent_state[StateField.RUNNER] = plan.runner
    writes = [(keyspace.family(plan.parent_id), "family", family_fields(plan))]
    if parent_state:
        writes.append((keyspace.job(plan.parent_id).state, "link", parent_state))
    for child_id in plan.child_ids:
        link: dict[str, Any] = {StateField.PARENT: plan.parent_id}
        if plan.runner is not None:
            link[StateField.RUNNER] = plan.runner
        writes.append((keyspace.job(child_id).state, "link", link))
    return writes


def record_family(publisher: Publisher, plan: FamilyPlan) -> None:
    """Record `plan` before its children are sent (see the module docstring)."""
    settings = publisher.settings
    plan.check(settings.max_children)
    writes = _writes(plan, settings)
    pipe = publisher.redis.pipeline(transaction=False)
    for key, _, fields in writes[:1]:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, settings.job_ttl)
    pipe.zadd(publisher.keyspace.families, {plan.parent_id: _next_check(settings)})
    pipe.execute()
    publisher.publish(parent_pending(plan))
    for draft in _pending(plan.child_ids):
        publisher.publish(draft)
    pipe = publisher.redis.pipeline(transaction=False)
    for key, _, fields in writes[1:]:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, settings.job_ttl)
    pipe.execute()


async def arecord_family(publisher: AsyncPublisher, plan: FamilyPlan) -> None:
    """`record_family` for asyncio callers."""
    settings = publisher.settings
    plan.check(settings.max_children)
    writes = _writes(plan, settings)
    async with publisher.redis.pipeline(transaction=False) as pipe:
        for key, _, fields in writes[:1]:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, settings.job_ttl)
        pipe.zadd(publisher.keyspace.families, {plan.parent_id: _next_check(settings)})
        await pipe.execute()
    await publisher.publish(parent_pending(plan))
    for draft in _pending(plan.child_ids):
        await publisher.publish(draft)
    async with publisher.redis.pipeline(transaction=False) as pipe:
        for key, _, fields in writes[1:]:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, settings.job_ttl)
        await pipe.execute()


def _next_check(settings: Settings) -> float:
    """When the family sweeper first looks at a new family (protocol/family_sweeper.py)."""
    return time.time() + settings.lease_seconds


__all__ = [
    "ChildPlan",
    "FamilyKind",
    "FamilyPlan",
    "InvalidFamily",
    "InvalidJobId",
    "arecord_family",
    "record_family",
]
