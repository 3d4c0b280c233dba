"""Every task's lifecycle from Celery's signals, with a real prefork worker subprocess."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from progress_streamer.redis_server import RedisServer
from tests.support.celery_worker import Worker, running_worker

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    with running_worker(redis_server.url) as running:
        yield running


def new_job() -> str:
    return uuid.uuid4().hex


def test_a_plain_task_goes_pending_started_success(worker: Worker) -> None:
    job = new_job()
    worker.runner.enqueue(job, "tests.plain", {"x": 2, "y": 3})
    end = worker.wait_terminal(job)
    events = worker.events(job)
    assert [e.status for e in events] == ["pending", "started", "success"]
    assert [e.seq for e in events] == [1, 2, 3]
    assert end.result == {"sum": 5} and end.attempt == 1
    assert not worker.redis.zscore(worker.keyspace.leases, job)


def test_progress_from_the_helper_is_streamed(worker: Worker) -> None:
    job = new_job()
    worker.runner.enqueue(job, "tests.helper", {})
    worker.wait_terminal(job)
    progress = [e for e in worker.events(job) if e.status == "progress"]
    assert (progress[0].step, progress[0].percent, progress[0].current, progress[0].total) == (
        "one",
        10,
        1,
        3,
    )
    assert (progress[-1].step, progress[-1].percent, progress[-1].message) == ("two", 75.0, "last")
    assert worker.statuses(job)[-1] == "success"


def test_update_state_progress_streams_unchanged(worker: Worker) -> None:
    job = new_job()
    worker.runner.enqueue(job, "tests.update_state", {"n": 200})
    end = worker.wait_terminal(job)
    progress = [e for e in worker.events(job) if e.status == "progress"]
    assert (progress[0].step, progress[0].percent) == ("fetching", 0)
    assert (progress[-1].step, progress[-1].percent, progress[-1].current) == (
        "rendering", 100.0, 200,
    )  # fmt: skip
    assert len(progress) < 100  # throttled
    assert end.status == "success" and end.result == "done"


def test_a_failure_carries_the_type_and_message_but_no_traceback(worker: Worker) -> None:
    job = new_job()
    worker.runner.enqueue(job, "tests.boom", {})
    end = worker.wait_terminal(job)
    assert end.status == "failure"
    assert end.error is not None
    assert (end.error.type, end.error.message) == ("ValueError", "the input was wrong")
    assert b"Traceback" not in end.raw and b".py" not in end.raw
    assert set(json.loads(end.raw)["error"]) == {"type", "message"}
    assert "Traceback" in worker.log()  # the full traceback goes to the worker's log


@pytest.mark.parametrize(
    ("task", "kind"),
    [("tests.not_json", "ResultNotSerializable"), ("tests.too_large", "ResultTooLarge")],
)
def test_a_result_that_cannot_be_an_event_ends_the_job_failed(
    worker: Worker, task: str, kind: str
) -> None:
    job = new_job()
    worker.runner.enqueue(job, task, {})
    end = worker.wait_terminal(job)
    assert end.status == "failure" and end.error is not None and end.error.type == kind
    assert worker.statuses(job) == ["pending", "started", "failure"]


def test_a_retried_task_starts_again_with_a_larger_attempt_and_no_new_pending(
    worker: Worker,
) -> None:
    job = new_job()
    worker.runner.enqueue(job, "tests.retry", {"times": 2})
    end = worker.wait_terminal(job)
    events = worker.events(job)
    assert [e.status for e in events if e.status != "progress"] == [
        "pending", "started", "started", "started", "success",
    ]  # fmt: skip
    assert [e.attempt for e in events if e.status == "started"] == [1, 2, 3]
    assert end.result == {"runs": 3} and end.attempt == 3


def test_the_demo_report_attaches_its_csv(worker: Worker) -> None:
    job = new_job()
    worker.runner.enqueue(job, "demo.report", {"steps": 5, "step_ms": 0})
    end = worker.wait_terminal(job)
    assert end.status == "success"
    assert end.result["filename"] == f"report-{job}.csv"
    stored = worker.redis.hgetall(worker.keyspace.job(job).file)
    assert stored[b"name"] == f"report-{job}.csv".encode()
    assert stored[b"content_type"] == b"text/csv"
    data = stored[b"chunk:0"]  # a small file: one chunk
    lines = data.decode().splitlines()
    assert lines[0] == "page,region,units,revenue" and len(lines) == 1 + 5 + 1
    assert end.result["rows"] == 5 and end.result["bytes"] == len(data) == int(stored[b"size"])
    steps = [e.step for e in worker.events(job) if e.status == "progress"]
    assert steps[0] == "fetching" and "rendering" in steps and steps[-1] == "saving"
    percents = [e.percent for e in worker.events(job) if e.status == "progress"]
    assert percents == sorted(percents)


def test_demo_fail_fails_at_the_asked_percent(worker: Worker) -> None:
    job = new_job()
    worker.runner.enqueue(job, "demo.fail", {"fail_at": 30, "step_ms": 0})
    end = worker.wait_terminal(job)
    assert end.error is not None
    assert (end.error.type, end.error.message) == (
        "DemoFailure",
        "demo.fail failed at 30% as asked",
    )
    last_progress = [e for e in worker.events(job) if e.status == "progress"][-1]
    assert last_progress.percent == 30


def test_a_bad_progress_report_raises_in_the_task_which_goes_on(worker: Worker) -> None:
    job = new_job()
    worker.runner.enqueue(job, "tests.bad_progress", {})
    end = worker.wait_terminal(job)
    assert end.status == "success"
    assert end.result == ["EventTooLarge", "ValueError", "ValueError"]
    assert [e.percent for e in worker.events(job) if e.status == "progress"] == [5]


def test_unbound_tasks_use_the_module_level_helpers(worker: Worker) -> None:
    job = new_job()
    worker.runner.enqueue(job, "tests.unbound", {})
    assert worker.wait_terminal(job).result == "ok"
    progress = [e for e in worker.events(job) if e.status == "progress"]
    assert [(e.step, e.percent, e.message) for e in progress] == [("unbound", 50, "half")]
    stored = worker.redis.hgetall(worker.keyspace.job(job).file)
    assert stored[b"name"] == b"u.txt" and stored[b"chunk:0"] == b"hello"


def test_a_task_run_inside_another_reports_to_its_own_job_and_the_outer_one_to_its(
    worker: Worker,
) -> None:
    outer, inner = new_job(), new_job()
    worker.runner.enqueue(outer, "tests.nested", {"inner_job": inner})
    assert worker.wait_terminal(outer).result == "ok"
    assert worker.wait_terminal(inner).result == "inner"
    steps = {job: [e.step for e in worker.events(job) if e.status == "progress"]
             for job in (outer, inner)}  # fmt: skip
    assert steps == {outer: ["outer", "outer again"], inner: ["inner"]}


def test_a_task_whose_pending_state_redis_lost_is_not_run_and_ends_state_lost(
    worker: Worker,
) -> None:
    """Issue 14, item 3: the task message carries what its `pending` saw of the job's
    state, so a worker starting it after Redis lost that state neither recreates the
    job from seq 1 nor runs it; the job ends `StateLost`, numbered past the lost seq."""
    job, key = new_job(), f"mark-{uuid.uuid4().hex}"
    worker.app.send_task("tests.mark", kwargs={"key": key}, task_id=job, countdown=1)
    assert worker.statuses(job) == ["pending"]
    worker.redis.delete(*worker.keyspace.job(job).all_keys)  # a restart without persistence
    end = worker.wait_terminal(job)
    assert (end.seq, end.status, end.error and end.error.type) == (2, "failure", "StateLost")
    assert [e.seq for e in worker.events(job)] == [2]
    assert worker.redis.get(key) is None  # the body never ran


def test_no_signal_handler_raised(worker: Worker) -> None:
    assert "Signal handler" not in worker.log(), worker.log()
