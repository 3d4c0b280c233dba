"""The Celery signals: every task's lifecycle published with no change to task code.

Which process each handler runs in matters with the prefork pool:

    sender (web app, any .delay())   before_task_publish -> pending (not on a retry)
    pool child                       task_prerun  -> started (+ lease, heartbeat)
                                     task_success -> success, or failure Result*
                                     task_failure -> failure {type, message}
                                     task_retry   -> nothing (the next run is `started`)
                                     task_postrun -> stop the heartbeat and throttle
    worker parent                    task_revoked -> revoked
                                     task_failure (WorkerLostError) -> failure WorkerLost
                                     task_unknown -> failure NotRegistered

A refused publish (the job is already terminal, e.g. cancelled) is logged and ignored.
The sender puts what its `pending` saw of the job's state into the task message
(`SEEN_HEADER`), so the pool child's `started` is refused too when Redis lost that state
meanwhile (protocol/incarnation.py); the child's later events carry its own.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from dataclasses import replace
from typing import Any

import redis
from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import WorkerShutdown

from progress_streamer.celery.runtime import RunningAttempt, runtime
from progress_streamer.protocol.connections import sync_client
from progress_streamer.protocol.event import (
    ErrorInfo,
    EventDraft,
    EventNotSerializable,
    EventTooLarge,
)
from progress_streamer.protocol.incarnation import SEEN_HEADER, SeenState
from progress_streamer.protocol.keys import is_valid_job_id
from progress_streamer.protocol.outcome import error_info, error_of, result_error, shorter_errors
from progress_streamer.protocol.publisher import PublishOutcome
from progress_streamer.protocol.settings import SettingsError
from progress_streamer.protocol.status import JobStatus

log = logging.getLogger(__name__)


def on_before_task_publish(
    sender: Any = None, headers: dict[str, Any] | None = None, body: Any = None, **_: Any
) -> None:
    message = headers if headers is not None else {}
    job_id = message.get("id")
    if job_id is None and isinstance(body, dict):  # message protocol 1
        job_id = body.get("id")
        message = body
    if int(message.get("retries") or 0) > 0:
        return  # a retry: the job is already running, its next run publishes `started`
    if not is_valid_job_id(job_id):
        log.debug("task %s: id %r is not a job id; no events", sender, job_id)
        return
    outcome = publish(EventDraft(job_id=str(job_id), status=JobStatus.PENDING))
    if outcome is not None and outcome.seen is not None and message is headers:
        headers[SEEN_HEADER] = outcome.seen.as_text()  # protocol 2: the worker's request


def on_task_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if not is_valid_job_id(task_id):
        return
    assert task_id is not None
    attempt = RunningAttempt(runtime.publisher, task_id)
    runtime.begin(attempt)
    seen = SeenState.from_text(getattr(task.request, SEEN_HEADER, None))
    try:
        outcome = attempt.start(int(task.request.retries or 0) + 1, seen)
    except (redis.RedisError, OSError) as exc:
        log.warning("job %s: `started` not published, running anyway: %s", task_id, exc)
        return
    if not outcome.accepted:
        log.info("job %s: `started` refused (%s)", task_id, outcome.reason)


def on_task_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    attempt = runtime.attempt_of(sender.request.id if sender is not None else None)
    if attempt is None or attempt.refused:
        return
    attempt.flush()
    attempt.stop()
    draft = EventDraft(
        job_id=attempt.job_id, status=JobStatus.SUCCESS, attempt=attempt.number, result=result
    )
    try:
        finish(draft, attempt)
    except (EventNotSerializable, EventTooLarge) as exc:
        finish(failure_of(attempt, result_error(exc)), attempt)
    attempt.ended = True


def on_task_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    if not is_valid_job_id(task_id) or exception is None:
        return
    assert task_id is not None
    attempt = runtime.attempt_of(task_id)
    if attempt is not None:  # in the pool child that ran the task
        if attempt.refused:
            return
        attempt.flush()
        attempt.stop()
        finish(failure_of(attempt, error_of(exception)), attempt)
        attempt.ended = True
    elif isinstance(exception, WorkerLostError):  # in the parent: the child died
        message = f"the worker process running this job exited unexpectedly ({exception})"
        finish(EventDraft(job_id=task_id, status=JobStatus.FAILURE, error=worker_lost(message)))
    else:  # in the parent, e.g. a hard time limit
        finish(EventDraft(job_id=task_id, status=JobStatus.FAILURE, error=error_of(exception)))


def on_task_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    attempt = runtime.attempt_of(getattr(request, "id", None))
    if attempt is None:
        return
    attempt.flush()
    # Say so at once, so a bar does not look frozen through the countdown.
    message = retry_message(request, reason, getattr(sender, "max_retries", None))
    publish(EventDraft(job_id=attempt.job_id, status=JobStatus.PROGRESS,
                       attempt=attempt.number, message=message), attempt)  # fmt: skip
    attempt.stop()
    # Between runs no heartbeat runs: take the job out of the sweeper's index.
    forget_lease(attempt.job_id)
    attempt.ended = True
    log.info("job %s: retry scheduled (%s)", attempt.job_id, reason)


def retry_message(request: Any, reason: Any, max_retries: int | None) -> str:
    """`retrying in 10 s (try 2 of 4)`, from Celery's `Retry` and the task's bounds."""
    when = getattr(reason, "when", None)
    if isinstance(when, datetime.datetime):
        now = datetime.datetime.now(when.tzinfo)
        when = max((when - now).total_seconds(), 0.0)
    wait = f" in {when:.0f} s" if isinstance(when, int | float) else ""
    next_try = int(getattr(request, "retries", 0) or 0) + 2
    of = f" of {max_retries + 1}" if isinstance(max_retries, int) else ""
    return f"retrying{wait} (try {next_try}{of})"


def on_task_postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    attempt = runtime.end(task_id) if task_id is not None else None
    if attempt is None:
        return
    attempt.stop()
    if not attempt.ended and not attempt.refused:
        # Ignore/Reject or similar: no terminal status from us, and no false WorkerLost.
        log.info("job %s: the task ended in state %s without a terminal event", task_id, state)
        forget_lease(attempt.job_id)


def on_task_revoked(request: Any = None, terminated: bool = False, expired: bool = False,
                    **_: Any) -> None:  # fmt: skip
    job_id = getattr(request, "id", None)
    if not is_valid_job_id(job_id):
        return
    message = "expired before it ran" if expired else "cancelled"
    finish(EventDraft(job_id=str(job_id), status=JobStatus.REVOKED, message=message))


def on_task_unknown(name: str | None = None, id: str | None = None, **_: Any) -> None:
    if not is_valid_job_id(id):
        return
    assert id is not None
    error = ErrorInfo(type="NotRegistered", message=f"no worker task is named {name!r}")
    finish(EventDraft(job_id=id, status=JobStatus.FAILURE, error=error))


def publish(draft: EventDraft, attempt: RunningAttempt | None = None) -> PublishOutcome | None:
    """Publish (through the running attempt, if any: it passes the state it saw), logging
    (never raising) a refusal or a Redis error; the outcome, None on a Redis error."""
    try:
        if attempt is None:
            outcome = runtime.publisher.publish(draft)
        else:
            outcome = attempt.publish(draft)
    except (redis.RedisError, OSError) as exc:
        log.warning("job %s: %s event not published: %s", draft.job_id, draft.status, exc)
        return None
    if not outcome.accepted:
        log.debug("job %s: %s refused (%s)", draft.job_id, draft.status, outcome.reason)
    return outcome


def finish(draft: EventDraft, attempt: RunningAttempt | None = None) -> None:
    """Publish a terminal event, then drop the job from the sweeper's index.

    A `success` too large or not JSON raises (the caller turns it into a failure); a
    failure always gets through, its message shortened until the event fits."""
    if draft.error is None:
        publish(draft, attempt)
    else:
        for error in shorter_errors(draft.error):
            with contextlib.suppress(EventTooLarge):
                publish(replace(draft, error=error), attempt)
                break
    forget_lease(draft.job_id)


def forget_lease(job_id: str) -> None:
    try:
        runtime.redis.zrem(runtime.publisher.keyspace.leases, job_id)
    except (redis.RedisError, OSError) as exc:
        log.warning("job %s: lease index not cleared: %s", job_id, exc)


def failure_of(attempt: RunningAttempt, error: ErrorInfo) -> EventDraft:
    return EventDraft(
        job_id=attempt.job_id, status=JobStatus.FAILURE, attempt=attempt.number, error=error
    )


def worker_lost(message: str) -> ErrorInfo:
    return error_info("WorkerLost", message)


def on_worker_process_init(**_: Any) -> None:
    runtime.after_fork()


def on_worker_init(**_: Any) -> None:
    """On a Redis Cluster, check its primaries' version as the worker starts (before its
    pool forks): one older than 7.0 stops the worker with the reason, instead of every
    task failing to publish. Nothing is checked (nor connected) on one Redis."""
    settings = runtime.settings
    if not settings.cluster:
        return
    try:
        sync_client(settings, max_connections=1).close()
    except SettingsError as exc:
        log.critical("%s", exc)
        # SystemExit: Celery's signal dispatch logs and drops ordinary exceptions.
        raise WorkerShutdown(str(exc)) from exc


def connected() -> bool:
    """Whether this process's handlers are connected (`task_prerun` stands for all)."""
    return bool(signals.task_prerun.has_listeners()) and any(
        receiver() is on_task_prerun for _, receiver in signals.task_prerun.receivers
    )


def connect() -> None:
    """Connect every handler (idempotent: Celery keys receivers by function)."""
    signals.before_task_publish.connect(on_before_task_publish, weak=False)
    signals.task_prerun.connect(on_task_prerun, weak=False)
    signals.task_success.connect(on_task_success, weak=False)
    signals.task_failure.connect(on_task_failure, weak=False)
    signals.task_retry.connect(on_task_retry, weak=False)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    signals.task_revoked.connect(on_task_revoked, weak=False)
    signals.task_unknown.connect(on_task_unknown, weak=False)
    signals.worker_process_init.connect(on_worker_process_init, weak=False)
    signals.worker_init.connect(on_worker_init, weak=False)
