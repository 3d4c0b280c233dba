"""The `progress-streamer` command as a subprocess, against a real server and Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from progress_streamer.protocol import ErrorInfo, EventDraft, JobStatus, Publisher, Settings
from tests.support import ROOT
from tests.support.celery_worker import wait_for
from tests.support.server import ServerThread, running_server


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    with running_server(settings) as server:
        yield server


def command(server: ServerThread, *args: str) -> list[str]:
    return [sys.executable, "-m", "progress_streamer.cli", "--url", server.url, *args]


def cli(server: ServerThread, *args: str) -> subprocess.CompletedProcess[str]:
    """The command, piped (not a TTY), as in CI logs."""
    return subprocess.run(
        command(server, *args), capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def watch_while_it_runs(
    server: ServerThread, pub: Publisher, end: EventDraft, *args: str, steps: int = 20
) -> subprocess.CompletedProcess[str]:
    """`watch` a job that runs (`steps` reports, then `end`) once the command follows it."""
    job = end.job_id
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    process = subprocess.Popen(
        command(server, "watch", job, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT,
    )  # fmt: skip
    wait_for(lambda: server.services.hub.watched_jobs == 1, 30)
    for i in range(steps):
        step = "fetching" if i < steps // 2 else "saving"
        pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, step=step, percent=i))
        time.sleep(0.01)  # pacing the job, not synchronisation
    pub.publish(end)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize(
    ("status", "code"),
    [(JobStatus.SUCCESS, 0), (JobStatus.FAILURE, 1), (JobStatus.REVOKED, 2)],
)
def test_watch_exits_by_the_final_status(
    server: ServerThread, pub: Publisher, status: JobStatus, code: int
) -> None:
    error = ErrorInfo(type="Boom", message="it broke") if status is JobStatus.FAILURE else None
    end = EventDraft(job_id=uuid.uuid4().hex, status=status, error=error)
    done = watch_while_it_runs(server, pub, end)
    assert done.returncode == code, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith(status.value)
    # Not a TTY: no redraws, a line per change of step (and the ends), not per event.
    assert "\r" not in done.stdout and len(lines) <= 6
    assert any("fetching" in line for line in lines) and any("saving" in line for line in lines)


def test_watch_json_prints_one_event_per_line(server: ServerThread, pub: Publisher) -> None:
    end = EventDraft(job_id=uuid.uuid4().hex, status=JobStatus.SUCCESS, result=7)
    done = watch_while_it_runs(server, pub, end, "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[-1]["seq"] + 1))
    assert events[-1]["status"] == "success" and events[-1]["result"] == 7


def test_an_unknown_job_or_an_unreachable_server_exits_3(server: ServerThread) -> None:
    unknown = cli(server, "watch", uuid.uuid4().hex)
    assert unknown.returncode == 3 and "404" in unknown.stderr
    assert cli(server, "watch", "bad id!").returncode == 3


def test_enqueue_then_status_and_a_usage_error(server: ServerThread) -> None:
    enqueued = cli(server, "enqueue", "demo.report", "steps=2", "step_ms=0")
    assert enqueued.returncode == 3  # no runner in this server: a clear 422 error
    assert "unknown_task" in enqueued.stderr
    usage = cli(server, "enqueue", "demo.report", "steps")
    assert usage.returncode == 64 and "key=value" in usage.stderr
