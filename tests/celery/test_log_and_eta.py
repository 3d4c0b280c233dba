"""Log lines and time-left estimates from a real prefork worker."""

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


def test_a_burst_of_1000_log_lines_arrives_in_order_or_counted(worker: Worker) -> None:
    job = uuid.uuid4().hex
    worker.runner.enqueue(job, "tests.logs", {"n": 1000})
    end = worker.wait_terminal(job, timeout=60)
    assert end.status == "success"
    logged = [e.log for e in worker.events(job) if e.log is not None]
    lines = [s for s in logged if s.startswith("line ")]
    dropped = sum(int(s.split()[0]) for s in logged if s.endswith("dropped"))
    assert len(lines) + dropped == 1000
    assert lines == sorted(lines, key=lambda s: int(s.split()[1]))
    assert 20 <= len(lines) < 1000  # bounded (20 per second by default), not lost
    assert logged[-1].endswith("dropped")  # the count went out before the end


def test_steady_progress_carries_rate_and_time_left(worker: Worker) -> None:
    job = uuid.uuid4().hex
    worker.runner.enqueue(job, "tests.steady", {"steps": 100, "step_ms": 40})
    end = worker.wait_terminal(job, timeout=60)
    assert end.status == "success"
    progress = [e for e in worker.events(job) if e.status == "progress"]
    early = [e for e in progress if e.rate is None]
    estimated = [e for e in progress if e.rate is not None]
    assert early and estimated  # absent until estimable, then present
    assert all(e.ts - progress[0].ts < 2.5 for e in early)
    for event in estimated:
        assert event.rate is not None and 12 <= event.rate <= 30  # ~25 items/s asked
        assert event.eta_seconds is not None and event.eta_seconds >= 0
