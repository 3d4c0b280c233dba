"""A parent job driven by its children's events, against a real Redis (no worker)."""

from __future__ import annotations

import dataclasses
import time

import pytest
import redis
import redis.asyncio

from progress_streamer.protocol.event import ErrorInfo, EventDraft, ProgressEvent, decode_event
from progress_streamer.protocol.family import (
    ChildPlan,
    FamilyKind,
    FamilyPlan,
    InvalidFamily,
    record_family,
)
from progress_streamer.protocol.family_update import ChildUpdate
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus

# Each test runs on one Redis and again on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.both_redis_modes


@pytest.fixture
def publisher(sync_redis: redis.Redis, settings: Settings) -> Publisher:
    # No throttle unless a test asks: every change of the parent is an event.
    return Publisher(sync_redis, dataclasses.replace(settings, throttle_ms=0))


def plan_of(kind: FamilyKind, n: int, *, fail_fast: bool = False, tag: str = "") -> FamilyPlan:
    children = tuple(ChildPlan(job_id=f"c{tag}{i}", name=f"task.{i}") for i in range(n))
    return FamilyPlan(parent_id=f"p{tag}", kind=kind, children=children, fail_fast=fail_fast)


def events(publisher: Publisher, job_id: str) -> list[ProgressEvent]:
    raw = publisher.redis.lrange(publisher.keyspace.job(job_id).history, 0, -1)
    return [decode_event(r) for r in raw]  # type: ignore[union-attr]


def run(publisher: Publisher, job_id: str, *percents: float, end: JobStatus = JobStatus.SUCCESS,
        result: object = None) -> None:  # fmt: skip
    publisher.publish(EventDraft(job_id=job_id, status=JobStatus.STARTED))
    for percent in percents:
        publisher.publish(EventDraft(job_id=job_id, status=JobStatus.PROGRESS, percent=percent))
    error = ErrorInfo(type="Boom", message="it broke") if end is JobStatus.FAILURE else None
    publisher.publish(EventDraft(job_id=job_id, status=end, error=error,
                                 result=result if end is JobStatus.SUCCESS else None))  # fmt: skip


def test_the_parent_starts_pending_with_every_child_counted(publisher: Publisher) -> None:
    plan = plan_of(FamilyKind.GROUP, 3)
    record_family(publisher, plan)
    (first,) = events(publisher, "p")
    assert first.status is JobStatus.PENDING
    assert first.children == {"total": 3, "pending": 3, "running": 0, "succeeded": 0,
                              "failed": 0, "revoked": 0}  # fmt: skip
    assert [events(publisher, f"c{i}")[0].status for i in range(3)] == [JobStatus.PENDING] * 3


def test_a_group_succeeds_with_its_children_results_in_order(publisher: Publisher) -> None:
    record_family(publisher, plan_of(FamilyKind.GROUP, 3))
    for i in (2, 0, 1):
        run(publisher, f"c{i}", 50.0, result={"n": i})
    parent = events(publisher, "p")
    assert [e.status for e in parent][:2] == [JobStatus.PENDING, JobStatus.STARTED]
    assert parent[-1].status is JobStatus.SUCCESS
    assert parent[-1].result == {"children": [{"n": 0}, {"n": 1}, {"n": 2}]}
    assert parent[-1].percent == 100
    assert parent[-1].children is not None and parent[-1].children["succeeded"] == 3
    percents = [e.percent for e in parent if e.percent is not None]
    assert percents == sorted(percents)
    for event in parent:
        assert event.children is not None
        counts = event.children
        assert sum(counts[k] for k in ("pending", "running", "succeeded", "failed",
                                       "revoked")) == counts["total"] == 3  # fmt: skip


def test_the_group_percent_is_the_mean_of_its_children(publisher: Publisher) -> None:
    record_family(publisher, plan_of(FamilyKind.GROUP, 4))
    publisher.publish(EventDraft(job_id="c0", status=JobStatus.STARTED))
    publisher.publish(EventDraft(job_id="c0", status=JobStatus.PROGRESS, percent=40.0))
    run(publisher, "c1")
    assert events(publisher, "p")[-1].percent == pytest.approx((40 + 100) / 4, abs=0.01)


@pytest.mark.parametrize("fail_fast", [False, True])
def test_a_failed_child_fails_the_group(publisher: Publisher, fail_fast: bool) -> None:
    record_family(publisher, plan_of(FamilyKind.GROUP, 3, fail_fast=fail_fast))
    publisher.publish(EventDraft(job_id="c2", status=JobStatus.STARTED))
    run(publisher, "c0", end=JobStatus.FAILURE)
    last = events(publisher, "p")[-1]
    if fail_fast:
        assert last.status is JobStatus.FAILURE
        assert last.error is not None and last.error.type == "ChildFailed"
        assert last.children == {"total": 3, "pending": 0, "running": 0, "succeeded": 0,
                                 "failed": 1, "revoked": 2}  # fmt: skip
        for child in ("c1", "c2"):
            assert [e.status for e in events(publisher, child)].count(JobStatus.REVOKED) == 1
        return
    assert not last.is_terminal
    run(publisher, "c1")
    publisher.publish(EventDraft(job_id="c2", status=JobStatus.SUCCESS))
    last = events(publisher, "p")[-1]
    assert last.status is JobStatus.FAILURE
    assert last.error == ErrorInfo(type="ChildFailed", message="1 of 3 children failed")


def test_a_chain_fails_with_its_link_error_and_revokes_the_rest(publisher: Publisher) -> None:
    record_family(publisher, plan_of(FamilyKind.CHAIN, 3))
    run(publisher, "c0", result=1)
    publisher.publish(EventDraft(job_id="c1", status=JobStatus.STARTED))
    publisher.publish(EventDraft(job_id="c1", status=JobStatus.PROGRESS, percent=50.0,
                                 step="fetching"))  # fmt: skip
    running = events(publisher, "p")[-1]
    assert running.percent == pytest.approx(50.0, abs=0.01)  # (100 + 50) / 3
    assert running.step == "fetching"
    publisher.publish(EventDraft(job_id="c1", status=JobStatus.FAILURE,
                                 error=ErrorInfo(type="Boom", message="it broke")))  # fmt: skip
    last = events(publisher, "p")[-1]
    assert last.status is JobStatus.FAILURE
    assert last.error == ErrorInfo(type="Boom", message="it broke")
    assert last.children is not None and last.children["revoked"] == 1
    assert events(publisher, "c2")[-1].status is JobStatus.REVOKED


def test_a_chain_succeeds_with_its_last_result(publisher: Publisher) -> None:
    record_family(publisher, plan_of(FamilyKind.CHAIN, 2))
    publisher.publish(EventDraft(job_id="c0", status=JobStatus.STARTED))
    assert events(publisher, "p")[-1].step == "task.0"  # no step reported: the task's name
    run(publisher, "c0", result=1)
    run(publisher, "c1", result={"last": True})
    last = events(publisher, "p")[-1]
    assert (last.status, last.result) == (JobStatus.SUCCESS, {"last": True})


def test_a_chord_ends_with_its_callback(publisher: Publisher) -> None:
    record_family(publisher, plan_of(FamilyKind.CHORD, 3))  # c0, c1, then callback c2
    run(publisher, "c0")
    run(publisher, "c1")
    assert not events(publisher, "p")[-1].is_terminal
    run(publisher, "c2", result="merged")
    last = events(publisher, "p")[-1]
    assert (last.status, last.result) == (JobStatus.SUCCESS, "merged")


def test_duplicate_child_events_change_nothing(publisher: Publisher) -> None:
    record_family(publisher, plan_of(FamilyKind.GROUP, 2))
    publisher.publish(EventDraft(job_id="c0", status=JobStatus.STARTED))
    publisher.publish(EventDraft(job_id="c0", status=JobStatus.PROGRESS, percent=30.0))
    before = events(publisher, "p")
    family_before = publisher.redis.hgetall(publisher.keyspace.family("p"))
    for event in events(publisher, "c0"):  # replay every child event
        publisher.families.child_published("p", ChildUpdate.of_event(event))
    assert events(publisher, "p") == before
    assert publisher.redis.hgetall(publisher.keyspace.family("p")) == family_before


def test_cancel_revokes_each_unfinished_child_once_then_the_parent(publisher: Publisher) -> None:
    record_family(publisher, plan_of(FamilyKind.GROUP, 3))
    run(publisher, "c0")
    publisher.publish(EventDraft(job_id="c1", status=JobStatus.STARTED))
    outcome = publisher.families.cancel("p")
    assert outcome.accepted
    last = events(publisher, "p")[-1]
    assert last.status is JobStatus.REVOKED
    assert last.children == {"total": 3, "pending": 0, "running": 0, "succeeded": 1,
                             "failed": 0, "revoked": 2}  # fmt: skip
    for child in ("c1", "c2"):
        assert [e.status for e in events(publisher, child)].count(JobStatus.REVOKED) == 1
    assert [e.status for e in events(publisher, "c0")][-1] is JobStatus.SUCCESS
    assert not publisher.families.cancel("p").accepted  # already over: refused


def test_a_nested_group_counts_as_one_link_of_its_chain(publisher: Publisher) -> None:
    inner = plan_of(FamilyKind.GROUP, 2, tag="g")
    outer = FamilyPlan(
        parent_id="outer",
        kind=FamilyKind.CHAIN,
        children=(ChildPlan(job_id="a", name="a"), ChildPlan(job_id="pg", name="group"),
                  ChildPlan(job_id="z", name="z")),
    )  # fmt: skip
    record_family(publisher, inner)
    record_family(publisher, outer)
    run(publisher, "a")
    run(publisher, "cg0", result=0)
    publisher.publish(EventDraft(job_id="cg1", status=JobStatus.STARTED))
    middle = events(publisher, "outer")[-1]
    assert middle.children is not None and middle.children["running"] == 1
    assert middle.percent == pytest.approx((100 + 50) / 3, abs=0.01)
    run(publisher, "cg1", result=1)
    assert events(publisher, "pg")[-1].status is JobStatus.SUCCESS
    run(publisher, "z", result="done")
    last = events(publisher, "outer")[-1]
    assert (last.status, last.result) == (JobStatus.SUCCESS, "done")


def test_parent_progress_is_throttled_but_its_end_is_not(
    sync_redis: redis.Redis, settings: Settings
) -> None:
    publisher = Publisher(sync_redis, dataclasses.replace(settings, throttle_ms=200))
    record_family(publisher, plan_of(FamilyKind.GROUP, 2))
    publisher.publish(EventDraft(job_id="c0", status=JobStatus.STARTED))
    publisher.publish(EventDraft(job_id="c1", status=JobStatus.STARTED))
    for percent in range(1, 40):
        publisher.publish(EventDraft(job_id="c0", status=JobStatus.PROGRESS, percent=percent))
    run(publisher, "c0")
    run(publisher, "c1")
    parent = events(publisher, "p")
    assert parent[-1].status is JobStatus.SUCCESS
    assert len(parent) < 10  # pending, started, a few progress, success
    # A held change is flushed by a timer: the parent does not stay behind its children.
    record_family(publisher, plan_of(FamilyKind.GROUP, 2, tag="x"))
    publisher.publish(EventDraft(job_id="cx0", status=JobStatus.STARTED))
    publisher.publish(EventDraft(job_id="cx0", status=JobStatus.PROGRESS, percent=10.0))
    publisher.publish(EventDraft(job_id="cx0", status=JobStatus.PROGRESS, percent=80.0))
    deadline = time.monotonic() + 5
    while events(publisher, "px")[-1].percent != pytest.approx(40.0, abs=0.01):
        assert time.monotonic() < deadline, events(publisher, "px")[-1]
        time.sleep(0.02)
    publisher.families.close()


def test_too_many_children_are_refused_before_anything_is_written(publisher: Publisher) -> None:
    small = Publisher(publisher.redis, dataclasses.replace(publisher.settings, max_children=2))
    with pytest.raises(InvalidFamily, match="PROGRESS_MAX_CHILDREN"):
        record_family(small, plan_of(FamilyKind.GROUP, 3))
    assert not publisher.redis.exists(publisher.keyspace.job("p").state)


async def test_the_sweeper_applies_a_lost_update_and_ends_a_parent_of_lost_children(
    publisher: Publisher, async_redis: redis.asyncio.Redis
) -> None:
    from progress_streamer.protocol.sweeper import LeaseSweeper

    record_family(publisher, plan_of(FamilyKind.GROUP, 2))
    run(publisher, "c0", result="ok")
    # A child's terminal event whose parent update never happened (the process died):
    plain = Publisher(publisher.redis, publisher.settings)
    publisher.redis.hdel(publisher.keyspace.job("c1").state, "parent")
    run(plain, "c1", result="late")
    assert not events(publisher, "p")[-1].is_terminal
    sweeper = LeaseSweeper(async_redis, dataclasses.replace(publisher.settings, lease_seconds=1))
    publisher.redis.zadd(publisher.keyspace.families, {"p": 0})
    await sweeper.sweep_once()
    last = events(publisher, "p")[-1]
    assert (last.status, last.result) == (JobStatus.SUCCESS, {"children": ["ok", "late"]})
    # A parent whose children's state is gone ends `failure` rather than hanging.
    record_family(publisher, plan_of(FamilyKind.GROUP, 2, tag="l"))
    for child in ("cl0", "cl1"):
        publisher.redis.delete(*publisher.keyspace.job(child).all_keys)
    publisher.redis.zadd(publisher.keyspace.families, {"pl": 0})
    await sweeper.sweep_once()
    lost = events(publisher, "pl")[-1]
    assert lost.status is JobStatus.FAILURE
    assert lost.error is not None and lost.error.type == "ChildFailed"
    assert lost.children is not None and lost.children["failed"] == 2


def test_cancelling_one_child_counts_it_revoked_in_its_group(publisher: Publisher) -> None:
    record_family(publisher, plan_of(FamilyKind.GROUP, 2))
    publisher.publish(EventDraft(job_id="c0", status=JobStatus.STARTED))
    publisher.publish(EventDraft(job_id="c0", status=JobStatus.REVOKED, message="cancelled"))
    counts = events(publisher, "p")[-1].children
    assert counts == {"total": 2, "pending": 1, "running": 0, "succeeded": 0, "failed": 0,
                      "revoked": 1}  # fmt: skip
    run(publisher, "c1")
    last = events(publisher, "p")[-1]
    assert last.status is JobStatus.REVOKED
    assert last.message == "1 of 2 children were cancelled"


def test_a_chord_whose_header_fails_revokes_its_callback(publisher: Publisher) -> None:
    record_family(publisher, plan_of(FamilyKind.CHORD, 3))  # c0, c1, then callback c2
    run(publisher, "c0", end=JobStatus.FAILURE)
    assert not events(publisher, "p")[-1].is_terminal  # the rest of the header still runs
    run(publisher, "c1")
    last = events(publisher, "p")[-1]
    assert last.status is JobStatus.FAILURE
    assert last.error == ErrorInfo(type="ChildFailed", message="1 of 3 children failed")
    assert events(publisher, "c2")[-1].status is JobStatus.REVOKED
