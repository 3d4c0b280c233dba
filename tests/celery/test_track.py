"""`self.track()` and `track()` in a real prefork worker: the final count always goes out."""

from __future__ import annotations

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


@pytest.mark.parametrize("sized", [True, False])
def test_a_tracked_loop_reports_counts_up_to_the_last(worker: Worker, sized: bool) -> None:
    job = uuid.uuid4().hex
    worker.runner.enqueue(job, "tests.tracked", {"n": 300_000, "sized": sized})
    end = worker.wait_terminal(job, timeout=60)
    assert (end.status, end.result) == ("success", 300_000)
    counted = [e for e in worker.events(job) if e.status == "progress" and e.current]
    assert counted[-1].current == 300_000 and counted[-1].step == "counting"
    assert counted[-1].total == (300_000 if sized else None)
    assert counted[-1].percent == (100.0 if sized else None)
    currents = [e.current for e in counted]
    assert currents == sorted(currents)


def test_track_without_self(worker: Worker) -> None:
    job = uuid.uuid4().hex
    worker.runner.enqueue(job, "tests.tracked_unbound", {"n": 1000})
    end = worker.wait_terminal(job, timeout=60)
    assert (end.status, end.result) == ("success", 1000)
    assert [e.current for e in worker.events(job) if e.current][-1] == 1000


def test_a_tqdm_bar_inside_a_task_streams_its_count(worker: Worker) -> None:
    job = uuid.uuid4().hex
    worker.runner.enqueue(job, "tests.tqdm_loop", {"n": 5000})
    end = worker.wait_terminal(job, timeout=60)
    assert (end.status, end.result) == ("success", 5000)
    counted = [e for e in worker.events(job) if e.current is not None]
    assert counted[-1].current == counted[-1].total == 5000
    assert counted[-1].step == "crunching" and counted[-1].percent == 100.0
