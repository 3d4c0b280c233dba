"""Cancel: `revoked` first through the publish script, then Celery's revoke; exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer
from tests.support.celery_worker import (
    Worker,
    new_queue,
    running_worker,
    sender,
    wait_for,
    worker_settings,
)

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    with running_worker(redis_server.url) as running:
        yield running


def new_job() -> str:
    return uuid.uuid4().hex


def is_gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ")[1].startswith(("Z", "X"))
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_cancel_of_a_running_task_ends_it_with_one_revoked_and_nothing_after(
    worker: Worker,
) -> None:
    job = new_job()
    worker.runner.enqueue(job, "tests.slow", {"seconds": 30})
    first = worker.wait_for_event(job, lambda e: (e.message or "").startswith("pid "))
    pid = int((first.message or "").split()[1])
    worker.wait_for_event(job, lambda e: e.status == "progress" and (e.percent or 0) > 0)

    outcome = worker.runner.cancel(job)

    assert outcome.accepted
    wait_for(lambda: is_gone(pid), 15, lambda: worker.log()[-2000:])  # terminated
    wait_for(lambda: f"Terminating {job}" in worker.log(), 15, worker.log)
    statuses = worker.statuses(job)
    assert statuses.count("revoked") == 1 and statuses[-1] == "revoked"
    assert statuses[:2] == ["pending", "started"]
    again = worker.runner.cancel(job)
    assert (again.accepted, again.reason) == (False, "terminal")
    assert worker.statuses(job) == statuses
    assert not worker.redis.zscore(worker.keyspace.leases, job)


def test_cancel_of_a_task_queued_behind_a_busy_queue_discards_it(worker: Worker) -> None:
    job, marker = new_job(), f"marker-{uuid.uuid4().hex}"
    other = new_queue()  # nobody consumes it yet
    worker.app.send_task("tests.mark", kwargs={"key": marker}, task_id=job, queue=other)
    assert worker.statuses(job) == ["pending"]

    assert worker.runner.cancel(job).accepted
    worker.app.control.add_consumer(other, destination=[worker.hostname], reply=True)

    wait_for(lambda: f"Discarding revoked task: tests.mark[{job}]" in worker.log(), 15, worker.log)
    assert worker.redis.get(marker) is None
    assert worker.statuses(job) == ["pending", "revoked"]


def test_cancel_with_no_worker_up_and_a_worker_started_later(redis_server: RedisServer) -> None:
    settings, queue = worker_settings(redis_server.url, lease_seconds=2), new_queue()
    app, runner = sender(settings, queue)
    job, marker = new_job(), f"marker-{uuid.uuid4().hex}"
    try:
        runner.enqueue(job, "tests.mark", {"key": marker})
        outcome = runner.cancel(job)
    finally:
        runner.close()
        app.close()
    assert outcome.accepted

    with running_worker(redis_server.url, settings=settings, queue=queue) as worker:
        wait_for(lambda: f"job {job} is already finished" in worker.log(), 15, worker.log)
        assert worker.redis.get(marker) is None
        assert worker.statuses(job) == ["pending", "revoked"]


def test_a_late_delivery_of_a_finished_job_does_not_run(worker: Worker) -> None:
    job, marker = new_job(), f"marker-{uuid.uuid4().hex}"
    publisher = Publisher(worker.redis, worker.settings)
    publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    publisher.publish(EventDraft(job_id=job, status=JobStatus.REVOKED))  # e.g. WorkerLost, revoked

    worker.app.send_task("tests.mark", kwargs={"key": marker}, task_id=job)

    wait_for(lambda: f"job {job} is already finished" in worker.log(), 15, worker.log)
    assert worker.redis.get(marker) is None
    assert worker.statuses(job) == ["started", "revoked"]


def test_cancel_of_an_unknown_job_is_not_found(worker: Worker) -> None:
    outcome = worker.runner.cancel(new_job())
    assert (outcome.accepted, outcome.reason) == (False, "not_found")
