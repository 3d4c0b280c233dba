"""Per-process state of the Celery integration: settings, the Redis client, running attempts.

The signal handlers (`signals.py`) and the task class (`task.py`) share one
`WorkerRuntime`. Its Redis client is built lazily in the process that uses it and
rebuilt after a fork (a prefork pool child never shares its parent's connections).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import redis

from progress_streamer.protocol.connections import SyncRedis, sync_client
from progress_streamer.protocol.estimate import RateEstimator
from progress_streamer.protocol.event import EventDraft, EventTooLarge, Report
from progress_streamer.protocol.incarnation import SeenState
from progress_streamer.protocol.lease import LeaseHeartbeat
from progress_streamer.protocol.log_lines import LogLines
from progress_streamer.protocol.publisher import Publisher, PublishOutcome
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.protocol.throttle import ProgressThrottle

log = logging.getLogger(__name__)

# Connections one worker process may hold to the progress Redis (per node on a cluster):
# a prefork child uses one at a time; a threads pool one per running task and heartbeat.
POOL_SIZE = 32


class WorkerRuntime:
    """Settings (from the environment unless configured) and a fork-safe publisher."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._settings: Settings | None = None
        self._client: SyncRedis | None = None
        self._publisher: Publisher | None = None
        self._pid = os.getpid()
        self._inherited: list[SyncRedis] = []
        self._attempts: dict[str, RunningAttempt] = {}

    def configure(self, settings: Settings) -> None:
        """Use these settings from now on (the web app's runner passes its own)."""
        with self._lock:
            self.close()
            self._settings = settings

    @property
    def settings(self) -> Settings:
        with self._lock:
            if self._settings is None:
                self._settings = Settings.from_env()
            return self._settings

    @property
    def publisher(self) -> Publisher:
        with self._lock:
            if os.getpid() != self._pid:
                self.after_fork()
            if self._publisher is None:
                self._client = sync_client(self.settings, max_connections=POOL_SIZE)
                self._publisher = Publisher(self._client, self.settings)
                self._publisher.families.revoke_tasks = revoke_tasks
            return self._publisher

    @property
    def redis(self) -> SyncRedis:
        return self.publisher.redis

    def after_fork(self) -> None:
        """Forget the parent's client without closing it: its sockets are the parent's."""
        with self._lock:
            if self._client is not None:
                self._inherited.append(self._client)
            self._client = self._publisher = None
            self._pid = os.getpid()
            self._attempts.clear()

    def close(self) -> None:
        with self._lock:
            if self._client is not None and os.getpid() == self._pid:
                self._client.close()
            self._client = self._publisher = None

    def begin(self, attempt: RunningAttempt) -> None:
        with self._lock:
            self._attempts[attempt.job_id] = attempt

    def attempt_of(self, job_id: str | None) -> RunningAttempt | None:
        with self._lock:
            return None if job_id is None else self._attempts.get(job_id)

    def end(self, job_id: str) -> RunningAttempt | None:
        with self._lock:
            return self._attempts.pop(job_id, None)


class RunningAttempt:
    """One run of a job in this process: its attempt number, throttle and heartbeat, and
    the job's state as its last accepted event left it (`seen`, passed with every
    publish: if Redis loses that state, the attempt's later events are refused and the
    job ends `StateLost`, protocol/incarnation.py)."""

    def __init__(self, publisher: Publisher, job_id: str) -> None:
        self.publisher = publisher
        self.job_id = job_id
        self.seen: SeenState | None = None
        self.number: int | None = None
        self.refused: str | None = None  # why `started` was refused: the job must not run
        self.ended = False  # a terminal event was published (or refused) for this run
        self.heartbeat: LeaseHeartbeat | None = None
        self.throttle = ProgressThrottle(self._send, publisher.settings.throttle_ms)
        self.estimator = RateEstimator()
        self.lines = LogLines(publisher.settings.log_lines_per_second)
        self._last_sent = Report(None, None, None, None, None)

    def start(self, minimum_attempt: int, seen: SeenState | None = None) -> PublishOutcome:
        """Publish `started` (granting the first lease) and start the heartbeat. `seen`:
        the state the task's message saw (its `pending` event's), if it carried one."""
        draft = EventDraft(job_id=self.job_id, status=JobStatus.STARTED, attempt=minimum_attempt)
        lease = self.publisher.settings.lease_seconds
        outcome = self.publish(draft, seen=seen, lease_seconds=lease)
        if not outcome.accepted:
            self.refused = outcome.reason or "refused"
            return outcome
        self.number = outcome.attempt
        self.heartbeat = LeaseHeartbeat(self.publisher, self.job_id, outcome.attempt).start()
        return outcome

    def publish(
        self,
        draft: EventDraft,
        *,
        seen: SeenState | None = None,
        lease_seconds: float | None = None,
    ) -> PublishOutcome:
        """Publish one of this attempt's events, passing the state it last saw."""
        outcome = self.publisher.publish(draft, seen=seen or self.seen, lease_seconds=lease_seconds)
        if outcome.accepted:
            self.seen = outcome.seen
        return outcome

    def flush(self) -> None:
        """Send the coalesced last report (and the count of dropped log lines) before a
        status change; never fails the job."""
        try:
            self.throttle.flush()
            self._send_lines(self.lines.take_dropped())
        except Exception as exc:
            log.warning("job %s: last progress report not sent: %s", self.job_id, exc)

    def log(self, text: str) -> None:
        """Publish a log line now (never coalesced), within the attempt's bound."""
        self._send_lines(self.lines.admit(text))

    def _send_lines(self, lines: list[str]) -> None:
        for line in lines:
            # The line carries the last progress sent, so the snapshot still shows it.
            fields = self._last_sent._asdict()
            draft = EventDraft(job_id=self.job_id, status=JobStatus.PROGRESS,
                               attempt=self.number, log=line, **fields)  # fmt: skip
            try:
                self.publish(draft)
            except (redis.RedisError, OSError) as exc:
                log.warning("job %s: log line not published: %s", self.job_id, exc)

    def stop(self) -> None:
        """The attempt is over: drop pending reports, stop the heartbeat."""
        self.throttle.close()
        if self.heartbeat is not None:
            self.heartbeat.stop()

    def _send(self, report: Report) -> None:
        self._last_sent = report
        rate, eta = self.estimator.observe(report, time.monotonic())
        draft = EventDraft(
            job_id=self.job_id, status=JobStatus.PROGRESS, attempt=self.number,
            rate=rate, eta_seconds=eta, **report._asdict(),
        )  # fmt: skip
        try:
            outcome = self._publish_dropping_large_data(draft)
        except (redis.RedisError, OSError) as exc:
            # Progress is best effort: a Redis hiccup must not fail a long job.
            log.warning("job %s: progress not published: %s", self.job_id, exc)
            return
        if not outcome.accepted:
            log.debug("job %s: progress refused (%s)", self.job_id, outcome.reason)

    def _publish_dropping_large_data(self, draft: EventDraft) -> PublishOutcome:
        """An event too large only because of its `data` goes out without it."""
        try:
            return self.publish(draft)
        except EventTooLarge as exc:
            if draft.data is None:
                raise
            log.warning("job %s: progress data dropped: %s", self.job_id, exc)
            return self.publish(dataclasses.replace(draft, data=None))


def revoke_tasks(job_ids: list[str]) -> None:
    """Stop the running tasks of children a parent's end revoked (in a worker: the app
    that runs this task; elsewhere: the current app)."""
    from celery import current_app

    current_app.control.revoke(job_ids, terminate=True, signal="SIGTERM")


runtime = WorkerRuntime()
"""The one runtime of this process."""
