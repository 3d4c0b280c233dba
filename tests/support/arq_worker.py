"""Helpers for the ARQ tests: a real `arq` worker subprocess, and waiting on a job's state.

Imported explicitly by the `test_arq_*` modules. Each worker gets its own key prefix, so
its ARQ queue (`<prefix>:arq:queue`) is its own too; nothing waits by sleeping: every wait
polls Redis against a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from progress_streamer.arq.worker_settings import queue_name_of
from progress_streamer.protocol.event import ProgressEvent, decode_event
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer
from tests.support import ROOT
from tests.support.redis_cluster import queue_env

LEASE_SECONDS = 2.0


def worker_settings(redis_server: RedisServer, **changes: object) -> Settings:
    base = Settings(
        redis_url=redis_server.url,
        key_prefix=f"t{uuid.uuid4().hex[:12]}",
        auth="none",
        throttle_ms=50,
        lease_seconds=LEASE_SECONDS,
    )
    return base.replace(**changes)


class ArqWorker:
    """`python -m arq <settings>` with the environment of `settings`."""

    def __init__(self, settings: Settings, settings_path: str) -> None:
        self.settings = settings
        self.settings_path = settings_path
        self.log = tempfile.NamedTemporaryFile(prefix="arq-worker-", suffix=".log", delete=False)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ArqWorker:
        env = {
            **os.environ,
            "REDIS_URL": self.settings.redis_url,
            "PROGRESS_KEY_PREFIX": self.settings.key_prefix,
            "PROGRESS_LEASE_SECONDS": str(self.settings.lease_seconds),
            "PROGRESS_THROTTLE_MS": str(self.settings.throttle_ms),
            "PROGRESS_AUTH": "none",
            **queue_env(self.settings),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "arq", self.settings_path],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_ready(timeout)
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        """ARQ writes its health-check key on its first poll, after `on_startup`."""
        key = queue_name_of(self.settings) + ":health-check"
        client = redis.Redis.from_url(self.settings.arq_url)  # the queue's Redis
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"the arq worker exited:\n{self.output()}")
                if client.exists(key):
                    return
                time.sleep(0.02)
            raise RuntimeError(f"the arq worker did not start:\n{self.output()}")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no hook, no finally, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-5000:]


def run_worker(settings: Settings, settings_path: str) -> Iterator[ArqWorker]:
    """A fixture body: a started worker, stopped afterwards (its log shown on failure)."""
    worker = ArqWorker(settings, settings_path).start()
    try:
        yield worker
    finally:
        worker.stop()
        os.unlink(worker.log.name)


async def wait_for_status(
    client: redis.asyncio.Redis,
    settings: Settings,
    job_id: str,
    statuses: set[JobStatus] | None = None,
    within: float = 15.0,
) -> ProgressEvent:
    """The job's snapshot once its status is one of `statuses` (default: terminal)."""
    wanted = statuses or {JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.REVOKED}
    key = KeySpace(settings.key_prefix).job(job_id).state
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        raw = await client.hget(key, "event")  # type: ignore[misc]
        if raw is not None:
            last = decode_event(raw)
            if last.status in wanted:
                return last
        await asyncio.sleep(0.02)
    pytest.fail(f"job {job_id} never reached {sorted(wanted)}; last event: {last}")


async def history(
    client: redis.asyncio.Redis, settings: Settings, job_id: str
) -> list[ProgressEvent]:
    key = KeySpace(settings.key_prefix).job(job_id).history
    return [decode_event(raw) for raw in await client.lrange(key, 0, -1)]  # type: ignore[misc]


async def wait_for_arq_result(
    client: redis.asyncio.Redis, job_id: str, within: float = 15.0
) -> None:
    """Until ARQ itself has recorded the job's end (its result key)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await client.exists(f"arq:result:{job_id}"):
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"ARQ never finished job {job_id}")
