"""One run of an ARQ job as the stream sees it: `started`, the lease heartbeat, the
`ctx["progress"]` and `ctx["attach_file"]` helpers, and the run's last event.

`worker_settings` wraps every job function so that it drives a `JobRun`; job code
only ever sees the two helpers in `ctx`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from redis.exceptions import RedisError

from progress_streamer.protocol.estimate import RateEstimator
from progress_streamer.protocol.event import (
    ErrorInfo,
    EventDraft,
    EventNotSerializable,
    EventTooLarge,
    Report,
    check_report,
)
from progress_streamer.protocol.files import aattach_file
from progress_streamer.protocol.incarnation import SeenState
from progress_streamer.protocol.log_lines import LogLines
from progress_streamer.protocol.outcome import error_of, result_error, shorter_errors
from progress_streamer.protocol.publisher import AsyncPublisher, PublishOutcome
from progress_streamer.protocol.status import JobStatus
from progress_streamer.protocol.throttle import AsyncProgressThrottle
from progress_streamer.protocol.track import count_report, track

log = logging.getLogger(__name__)

T = TypeVar("T")


# The run of the ARQ job this asyncio task executes (None elsewhere).
current_run: ContextVar[JobRun | None] = ContextVar("progress_streamer_arq_run", default=None)


class JobAlreadyFinished(RuntimeError):
    """ARQ ran a job whose stream already ended (revoked, or WorkerLost): it is not run again."""


class JobRun:
    """The events of one attempt of one job, published through the shared publisher, each
    with the job's state as the run's last accepted event left it (`seen`): if Redis
    loses that state, the run's later events are refused and the job ends `StateLost`
    (protocol/incarnation.py)."""

    def __init__(self, publisher: AsyncPublisher, job_id: str, job_try: int) -> None:
        self.publisher = publisher
        self.job_id = job_id
        self.seen: SeenState | None = None
        self.attempt = max(job_try, 1)  # a minimum: the script assigns the real attempt
        self._lease = publisher.settings.lease_seconds
        self._throttle = AsyncProgressThrottle(self._send, publisher.settings.throttle_ms)
        self._estimator = RateEstimator()
        self._lines = LogLines(publisher.settings.log_lines_per_second)
        self._last_sent = Report(None, None, None, None, None)
        self._heartbeat: asyncio.Task[None] | None = None
        self._ended = False  # a terminal event was published, or refused as too late

    async def start(self) -> None:
        """Publish `started` and start the heartbeat; raise `JobAlreadyFinished` if refused."""
        outcome = await self.publisher.publish(
            EventDraft(job_id=self.job_id, status=JobStatus.STARTED, attempt=self.attempt),
            lease_seconds=self._lease,
        )
        if not outcome.accepted:
            raise JobAlreadyFinished(
                f"job {self.job_id} is already finished ({outcome.reason}); not running it again"
            )
        self.seen = outcome.seen
        self.attempt = outcome.attempt
        await self.publisher.touch_lease(self.job_id, self.attempt)  # indexed for the sweeper
        self._heartbeat = asyncio.ensure_future(self._beat())
        current_run.set(self)  # for code without ctx (progress_streamer.tqdm)

    def report_count(
        self, current: int, total: int | None, step: str | None, message: str | None = None
    ) -> None:
        """A count from sync code on the loop, sent by the throttle's timer."""
        self._throttle.offer(count_report(current, total, step, message))

    async def progress(
        self,
        step: str | None = None,
        percent: float | None = None,
        current: int | None = None,
        total: int | None = None,
        message: str | None = None,
    ) -> None:
        """Report progress; throttled, so call it as often as you like. Bad values raise."""
        check_report(step, percent, current, total, message)
        await self._throttle.report(step, percent, current, total, message)

    def track(
        self,
        items: Iterable[T],
        step: str | None = None,
        total: int | None = None,
        message: str | None = None,
    ) -> Iterator[T]:
        """`items`, counted as `current`/`total` at a few tens of ns per item (track.py)."""
        check_report(step, None, None, total, message)
        return track(items, lambda n, of: self.report_count(n, of, step, message), total)

    async def attach_file(
        self, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Store a file for `GET /api/v1/jobs/<id>/result`; raises `files.FileTooLarge`.

        The asyncio twin of `protocol.files.attach_file` (that one is synchronous, for Celery).
        """
        publisher = self.publisher
        await aattach_file(
            publisher.redis, publisher.settings, self.job_id, name, data, content_type
        )

    async def succeed(self, result: Any) -> PublishOutcome:
        await self._flush()
        try:
            return await self._publish(JobStatus.SUCCESS, result=result)
        except (EventNotSerializable, EventTooLarge) as exc:
            return await self.fail_with(result_error(exc))

    async def fail(self, exc: BaseException) -> PublishOutcome:
        return await self.fail_with(error_of(exc))

    async def fail_with(self, error: ErrorInfo) -> PublishOutcome:
        """A `failure` event; a message too long for the event is cut, never refused."""
        await self._flush()
        for shorter in shorter_errors(error):
            with contextlib.suppress(EventTooLarge):
                return await self._publish(JobStatus.FAILURE, error=shorter)
        raise EventTooLarge(f"a failure event of job {self.job_id} does not fit at all")

    async def revoke(self) -> PublishOutcome:
        """ARQ aborted the run; refused (and harmless) when our cancel already said so."""
        self._throttle.close()
        return await self._publish(JobStatus.REVOKED)

    async def wait_for_rerun(self, seconds: float, message: str) -> PublishOutcome:
        """ARQ will run the job again: keep the lease for the wait, so no sweeper ends it."""
        await self._flush()
        return await self._publish(
            JobStatus.PROGRESS, message=message, lease_seconds=seconds + self._lease
        )

    async def stop(self) -> None:
        """End the heartbeat; once the job has ended, forget its lease index entry.

        Without a final event (ARQ re-runs it, or publishing failed) the entry stays, so
        the sweeper ends the job if no run comes back in time.
        """
        self._throttle.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if not self._ended:
            return
        try:
            await self.publisher.redis.zrem(self.publisher.keyspace.leases, self.job_id)
        except RedisError as exc:
            log.warning("job %s: lease index not cleared: %s", self.job_id, exc)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                if await self.publisher.touch_lease(self.job_id, self.attempt) is None:
                    return  # finished, or another attempt runs now
            except RedisError as exc:
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)

    async def _send(self, report: Report) -> None:
        self._last_sent = report
        rate, eta = self._estimator.observe(report, time.monotonic())
        await self._publish(
            JobStatus.PROGRESS, **report._asdict(), rate=rate, eta_seconds=eta,
            lease_seconds=self._lease,
        )  # fmt: skip

    async def _flush(self) -> None:
        try:
            await self._throttle.flush()
            await self._send_lines(self._lines.take_dropped())
        except Exception as exc:  # the last progress value must not block the final event
            log.warning("job %s: last progress report not sent: %s", self.job_id, exc)

    async def log(self, text: str) -> None:
        """`ctx["log"]`: a live log line, never coalesced, bounded per second."""
        await self._send_lines(self._lines.admit(text))

    async def _send_lines(self, lines: list[str]) -> None:
        for line in lines:  # with the last progress sent, so the snapshot still shows it
            await self._publish(JobStatus.PROGRESS, log=line, **self._last_sent._asdict())

    async def _publish(
        self, status: JobStatus, *, lease_seconds: float | None = None, **fields: Any
    ) -> PublishOutcome:
        draft = EventDraft(job_id=self.job_id, status=status, attempt=self.attempt, **fields)
        outcome = await self.publisher.publish(draft, lease_seconds=lease_seconds, seen=self.seen)
        if outcome.accepted:
            self.seen = outcome.seen
        if status.is_terminal and (outcome.accepted or outcome.reason == "terminal"):
            self._ended = True
        if not outcome.accepted:
            log.debug("job %s: %s refused (%s)", self.job_id, status, outcome.reason)
        return outcome
