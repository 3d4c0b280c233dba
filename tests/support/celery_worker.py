"""A real `celery worker` subprocess (prefork pool) for the Celery tests, and polling helpers.

Test modules define their own fixtures with `running_worker(...)`; every worker gets its
own queue and key prefix, and is killed with its whole process group at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis
from celery import Celery

from progress_streamer.celery.runner import CeleryRunner
from progress_streamer.protocol.connections import sync_client
from progress_streamer.protocol.event import ProgressEvent, decode_event
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.settings import Settings
from tests.support import ROOT
from tests.support.redis_cluster import queue_env
from workers.celery_app import create_celery_app

T = TypeVar("T")


@dataclass
class Worker:
    """A running worker, and what the test side needs to talk to it."""

    process: subprocess.Popen[bytes]
    logfile: Path
    settings: Settings
    queue: str
    app: Celery
    runner: CeleryRunner
    redis: redis.Redis

    @property
    def hostname(self) -> str:
        return f"{self.queue}@{socket.gethostname()}"

    @property
    def keyspace(self) -> KeySpace:
        return KeySpace(self.settings.key_prefix)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def events(self, job_id: str) -> list[ProgressEvent]:
        raw: list[bytes] = self.redis.lrange(self.keyspace.job(job_id).history, 0, -1)  # type: ignore[assignment]
        return [decode_event(r) for r in raw]

    def statuses(self, job_id: str) -> list[str]:
        return [e.status.value for e in self.events(job_id)]

    def wait_for_event(
        self, job_id: str, predicate: Callable[[ProgressEvent], bool], timeout: float = 15
    ) -> ProgressEvent:
        return wait_for(
            lambda: next((e for e in self.events(job_id) if predicate(e)), None),
            timeout,
            lambda: f"no such event for {job_id}: {self.statuses(job_id)}\n{self.log()[-3000:]}",
        )

    def wait_terminal(self, job_id: str, timeout: float = 15) -> ProgressEvent:
        return self.wait_for_event(job_id, lambda e: e.is_terminal, timeout)

    def kill(self) -> None:
        """SIGKILL the whole worker: the main process and its pool children."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def wait_for(
    probe: Callable[[], T | None], timeout: float, describe: Callable[[], str] = lambda: ""
) -> T:
    """Poll `probe` until it returns something other than None or False, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s. {describe()}")
        time.sleep(0.02)


def sender(settings: Settings, queue: str) -> tuple[Celery, CeleryRunner]:
    """The test side's app (sending to `queue`) and the web app's runner on it."""
    app = create_celery_app(settings, set_as_current=False)
    app.conf.task_default_queue = queue
    return app, CeleryRunner(settings, app=app)


def worker_settings(redis_url: str, lease_seconds: float) -> Settings:
    return Settings(
        redis_url=redis_url,
        key_prefix=f"c{uuid.uuid4().hex[:10]}",
        auth="none",
        throttle_ms=50,
        lease_seconds=lease_seconds,
    )


def new_queue() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


@contextmanager
def running_worker(
    redis_url: str,
    *,
    lease_seconds: float = 2.0,
    concurrency: int = 2,
    settings: Settings | None = None,
    queue: str | None = None,
) -> Iterator[Worker]:
    """A worker consuming `queue` with `settings` (new ones by default), killed at the end."""
    settings = settings or worker_settings(redis_url, lease_seconds)
    lease_seconds = settings.lease_seconds
    queue = queue or new_queue()
    logdir = Path(tempfile.mkdtemp(prefix="celery-test-"))
    logfile = logdir / "worker.log"
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PROGRESS_KEY_PREFIX": settings.key_prefix,
        "PROGRESS_LEASE_SECONDS": str(lease_seconds),
        "PROGRESS_THROTTLE_MS": str(settings.throttle_ms),
        "PYTHONPATH": str(ROOT),
        **queue_env(settings),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=INFO",
        "-Q", queue, "-n", f"{queue}@%h", "-I", "tests.support.celery_tasks",
        "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip
    with logfile.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    app, runner = sender(settings, queue)
    client = sync_client(settings, max_connections=8)
    worker = Worker(process, logfile, settings, queue, app, runner, client)
    try:
        wait_for(
            lambda: " ready." in worker.log() or process.poll() is not None,
            30,
            lambda: worker.log()[-3000:],
        )
        assert process.poll() is None, worker.log()[-3000:]
        yield worker
    finally:
        worker.kill()
        runner.close()
        close_backend(app)
        app.close()
        client.close()
        shutil.rmtree(logdir, ignore_errors=True)


def close_backend(app: Celery) -> None:
    """Disconnect the result backend's Redis connections this thread opened (sending a
    chord uses them); `app.close()` leaves them to the garbage collector."""
    backend = getattr(app._local, "backend", None)
    client = getattr(backend, "client", None)
    if client is not None:
        client.connection_pool.disconnect()
