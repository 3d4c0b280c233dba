"""One parent job for a Celery canvas: `start(group | chord | chain)` (SPEC.md, "Groups").

`start` gives every task of the canvas a task id (keeping ids already set), records the
parent job and its children (`protocol/family.py`) before anything is sent, so the
parent's `total` is right from its first event, then sends the canvas. A canvas nested in
another (a group inside a chain) becomes a parent job of its own that counts as one child
of the outer one: parents are counted by their outer structure. Canvases sent without
`start` stream per task, as before.

Chords need a result backend (Celery's own requirement): the reference deployment uses
`ChordBackend` on the broker's Redis, which follows no results (chord_backend.py).
Results pass between a chain's links as Celery passes them; the web app's `POST
/api/v1/jobs` builds immutable signatures, so its tasks take named params only, and
ignores their results (the stream carries them).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.canvas import Signature, _chain, chord, group

from progress_streamer.celery.runtime import runtime
from progress_streamer.protocol.event import ErrorInfo, EventDraft
from progress_streamer.protocol.family import ChildPlan, FamilyKind, FamilyPlan, record_family
from progress_streamer.protocol.outcome import error_of
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.status import JobStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class StartedFamily:
    """What `start` sent: the parent job, its children in order, and Celery's own result
    (`GroupResult`, `AsyncResult`, ...: what `apply_async` returned)."""

    parent_id: str  #: the job to show one bar for, cancel, and mint a token for
    child_ids: tuple[str, ...]  #: the children's job ids (a nested canvas: its parent's id)
    kind: FamilyKind
    result: Any


def start(
    signature: Signature,
    *,
    fail_fast: bool = False,
    parent_id: str | None = None,
    publisher: Publisher | None = None,
    runner: str | None = None,
    **options: Any,
) -> StartedFamily:
    """Record `signature` (a `group`, `chord` or `chain`) as one parent job, then send it
    with `apply_async(**options)`; return the parent's id and more (`StartedFamily`).

    `fail_fast`: a failed child ends the parent at once and revokes the unfinished ones
    (of this canvas and of the canvases nested in it). Raises `InvalidFamily` (too many
    children: `PROGRESS_MAX_CHILDREN`, repeated ids) and `TypeError` (not a canvas)
    before anything is written or sent."""
    publisher = publisher or runtime.publisher
    plans: list[FamilyPlan] = []
    top = _plan(signature, parent_id or uuid.uuid4().hex, fail_fast, runner, plans)
    for plan in plans:
        plan.check(publisher.settings.max_children)
    for plan in plans:  # innermost first: a nested parent's `pending` carries its counts
        record_family(publisher, plan)
    try:
        result = signature.apply_async(**options)
    except Exception as exc:  # nothing (or not all) was sent: end it rather than hang
        fail_unsent(publisher, plans, error_of(exc))
        raise
    return StartedFamily(
        parent_id=top.parent_id, child_ids=tuple(top.child_ids), kind=top.kind, result=result
    )


def fail_unsent(publisher: Publisher, plans: list[FamilyPlan], error: ErrorInfo) -> None:
    """Every task child not yet finished ends `failure` with the send's error (refused for
    one that already ended); their parents follow."""
    nested = {plan.parent_id for plan in plans}
    for plan in plans:
        for child_id in plan.child_ids:
            if child_id not in nested:
                draft = EventDraft(job_id=child_id, status=JobStatus.FAILURE, error=error)
                publisher.publish(draft)


def kind_of(signature: Signature) -> FamilyKind | None:
    """The family kind of a canvas; None for a single task."""
    if isinstance(signature, chord):
        return FamilyKind.CHORD
    if isinstance(signature, group):
        return FamilyKind.GROUP
    if isinstance(signature, _chain):
        return FamilyKind.CHAIN
    return None


def _plan(
    signature: Signature, parent_id: str, fail_fast: bool, runner: str | None,
    plans: list[FamilyPlan],
) -> FamilyPlan:  # fmt: skip
    kind = kind_of(signature)
    if kind is None:
        raise TypeError(f"start() takes a group, chord or chain, not {type(signature).__name__}")
    members = list(signature.tasks)
    if isinstance(signature, chord):
        members.append(signature.body)
    children = tuple(_child(m, fail_fast, runner, plans) for m in members)
    plan = FamilyPlan(
        parent_id=parent_id, kind=kind, children=children, fail_fast=fail_fast, runner=runner
    )
    plans.append(plan)
    return plan


def _child(
    member: Signature, fail_fast: bool, runner: str | None, plans: list[FamilyPlan]
) -> ChildPlan:
    kind = kind_of(member)
    if kind is not None:
        nested = _plan(member, uuid.uuid4().hex, fail_fast, runner, plans)
        return ChildPlan(job_id=nested.parent_id, name=kind.value)
    task_id = member.options.get("task_id") or uuid.uuid4().hex
    member.set(task_id=task_id)
    return ChildPlan(job_id=task_id, name=str(member.task))


def canvas_of(
    app: Celery, kind: FamilyKind, children: list[tuple[str, str, dict[str, Any]]]
) -> Signature:
    """The canvas for `(job_id, task name, params)` children (the web app's runner): each
    an immutable signature with its job id as task id; a chord's callback is the last."""
    sigs = [
        app.signature(task, kwargs=params, immutable=True).set(task_id=job_id, ignore_result=True)
        for job_id, task, params in children
    ]
    if kind is FamilyKind.GROUP:
        return group(sigs)
    if kind is FamilyKind.CHAIN:
        return _chain(*sigs)
    return chord(group(sigs[:-1]), sigs[-1])
