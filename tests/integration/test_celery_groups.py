"""Celery groups, chords and chains as one parent job, on a real prefork worker."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
import redis.asyncio
from celery import chain, chord, group
from celery.canvas import Signature

from progress_streamer.celery import start
from progress_streamer.protocol.event import ProgressEvent
from progress_streamer.protocol.status import JobStatus
from progress_streamer.protocol.sweeper import LeaseSweeper
from progress_streamer.redis_server import RedisServer
from tests.support.celery_worker import Worker, running_worker, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]

LEASE = 2.0

COUNTS = ("pending", "running", "succeeded", "failed", "revoked")


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    with running_worker(redis_server.url, concurrency=4) as running:
        yield running


def task(worker: Worker, name: str, **kwargs: object) -> Signature:
    """An immutable signature on the worker's queue (the worker sends a chain's next link
    and a chord's callback itself, with its own default queue otherwise)."""
    return worker.app.signature(
        name, kwargs=kwargs, immutable=True, queue=worker.queue, ignore_result=True
    )


def report(worker: Worker, steps: int = 3) -> Signature:
    return task(worker, "demo.report", steps=steps, step_ms=5)


def fail(worker: Worker) -> Signature:
    return task(worker, "demo.fail", fail_at=20, step_ms=5)


def check_counts(events: list[ProgressEvent]) -> None:
    for event in events:
        assert event.children is not None
        assert sum(event.children[k] for k in COUNTS) == event.children["total"]
    percents = [e.percent for e in events if e.percent is not None]
    assert percents == sorted(percents)


@pytest.mark.parametrize("fail_fast", [False, True])
def test_a_group_of_20_with_one_failing_child(worker: Worker, fail_fast: bool) -> None:
    members = [report(worker) for _ in range(19)]
    members.insert(7, fail(worker))
    started = start(group(members), fail_fast=fail_fast)
    assert len(started.child_ids) == 20
    end = worker.wait_terminal(started.parent_id, timeout=60)
    assert end.status is JobStatus.FAILURE
    assert end.error is not None and end.error.type == "ChildFailed"
    assert end.children is not None and end.children["failed"] == 1
    events = worker.events(started.parent_id)
    assert events[0].children == {"total": 20, "pending": 20, "running": 0, "succeeded": 0,
                                  "failed": 0, "revoked": 0}  # fmt: skip
    check_counts(events)
    if not fail_fast:
        assert end.children["succeeded"] == 19
        assert end.error.message == "1 of 20 children failed"
    for child in started.child_ids:  # every child ended, with one terminal event each
        worker.wait_terminal(child)
        terminal = [s for s in worker.statuses(child) if s in ("success", "failure", "revoked")]
        assert len(terminal) == 1, (child, worker.statuses(child))


def test_a_chord_of_10_and_its_callback(worker: Worker) -> None:
    canvas = chord([report(worker) for _ in range(10)], report(worker, steps=2))
    started = start(canvas)
    assert len(started.child_ids) == 11
    end = worker.wait_terminal(started.parent_id, timeout=60)
    assert end.status is JobStatus.SUCCESS, worker.log()[-3000:]
    callback = worker.wait_terminal(started.child_ids[-1])
    assert end.result == callback.result
    check_counts(worker.events(started.parent_id))


def test_a_chain_of_3_with_a_failing_middle_link(worker: Worker) -> None:
    started = start(chain(report(worker), fail(worker), report(worker)))
    end = worker.wait_terminal(started.parent_id, timeout=30)
    assert end.status is JobStatus.FAILURE
    failed = worker.wait_terminal(started.child_ids[1])
    assert end.error == failed.error  # the link's own error, not ChildFailed
    assert end.children is not None
    assert (end.children["succeeded"], end.children["failed"], end.children["revoked"]) == (1, 1, 1)
    assert worker.statuses(started.child_ids[2]) == ["pending", "revoked"]  # never ran
    steps = {e.step for e in worker.events(started.parent_id) if e.step}
    assert "demo.report" in steps  # the first link, before it reported a step of its own


def test_a_nested_group_in_a_chain_counts_as_one_link(worker: Worker) -> None:
    canvas = chain(report(worker), group(report(worker), report(worker), report(worker)))
    started = start(canvas)
    assert len(started.child_ids) == 2
    end = worker.wait_terminal(started.parent_id, timeout=30)
    assert end.status is JobStatus.SUCCESS
    inner = worker.wait_terminal(started.child_ids[1])
    assert inner.children is not None and inner.children["succeeded"] == 3
    assert end.result == inner.result and len(end.result["children"]) == 3


def test_cancelling_the_parent_revokes_each_unfinished_child_once(worker: Worker) -> None:
    slow = task(worker, "tests.slow", seconds=30)
    started = start(group([slow.clone() for _ in range(6)]))
    worker.wait_for_event(started.parent_id, lambda e: bool(e.children and e.children["running"]))
    outcome = worker.runner.cancel(started.parent_id)
    assert outcome.accepted
    end = worker.wait_terminal(started.parent_id)
    assert end.status is JobStatus.REVOKED
    assert end.children is not None and end.children["revoked"] == 6
    running = [c for c in started.child_ids if "started" in worker.statuses(c)]
    assert running
    # The worker terminates the running ones; their own `revoked` is refused.
    wait_for(lambda: worker.log().count("Terminating") >= len(running), 15, worker.log)
    for child in started.child_ids:
        assert worker.statuses(child).count("revoked") == 1
        assert worker.statuses(child)[-1] == "revoked"


def test_a_killed_pool_process_fails_its_child_and_the_group(worker: Worker) -> None:
    slow = task(worker, "tests.slow", seconds=1.5)
    started = start(group([slow.clone() for _ in range(3)]))
    victim = started.child_ids[0]
    first = worker.wait_for_event(victim, lambda e: (e.message or "").startswith("pid "))
    assert first.message is not None
    os.kill(int(first.message.split()[1]), signal.SIGKILL)
    lost = worker.wait_terminal(victim)
    assert lost.error is not None and lost.error.type == "WorkerLost"
    end = worker.wait_terminal(started.parent_id, timeout=30)
    assert end.status is JobStatus.FAILURE
    assert end.children is not None and end.children["failed"] == 1
    assert end.children["succeeded"] == 2


async def test_a_group_whose_whole_worker_is_killed_ends_through_the_sweeper(
    redis_server: RedisServer, async_redis: redis.asyncio.Redis
) -> None:
    with running_worker(redis_server.url, concurrency=2, lease_seconds=LEASE) as doomed:
        sweeper = LeaseSweeper(async_redis, doomed.settings)
        stop = asyncio.Event()
        sweeping = asyncio.create_task(sweeper.run(stop))
        try:
            slow = task(doomed, "tests.slow", seconds=60)
            started = start(group([slow.clone(), slow.clone()]))
            for child in started.child_ids:
                await asyncio.to_thread(
                    doomed.wait_for_event, child, lambda e: e.percent is not None
                )
            doomed.kill()  # SIGKILL: the worker and its pool; nobody publishes for them
            end = await asyncio.to_thread(doomed.wait_terminal, started.parent_id, 4 * LEASE + 10)
        finally:
            stop.set()
            await asyncio.wait_for(sweeping, timeout=10)
    assert end.status is JobStatus.FAILURE
    assert end.error is not None and end.error.type == "ChildFailed"
    assert end.children is not None and end.children["failed"] == 2
    for child in started.child_ids:
        lost = doomed.events(child)[-1]
        assert lost.error is not None and lost.error.type == "WorkerLost"
