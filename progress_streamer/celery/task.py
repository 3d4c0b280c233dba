"""The task class of our Celery app: progress, file attachments, and the cancelled-job guard.

Use it as an app's task class (`Celery(..., task_cls=ProgressTask)`). On a bound task:

    @app.task(bind=True)
    def build(self, n):
        self.progress(step="rendering", percent=75, current=3, total=4, message="page 3")
        self.update_state(state="PROGRESS", meta={"step": "rendering", "percent": 75})
        self.attach_file("report.csv", data, "text/csv")

`progress` and `attach_file` also exist as functions for unbound tasks (they use the
task running in this thread). Reports go through the throttle of the running attempt.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from celery import Celery, Task, current_task
from celery.backends.base import DisabledBackend
from celery.exceptions import Ignore

from progress_streamer.celery import signals
from progress_streamer.celery.runtime import RunningAttempt, runtime
from progress_streamer.celery.update_state import stream_update_state
from progress_streamer.protocol import files
from progress_streamer.protocol.event import check_report
from progress_streamer.protocol.track import count_report
from progress_streamer.protocol.track import track as track_items

log = logging.getLogger(__name__)

T = TypeVar("T")

# The ProgressTask running in this thread and its attempt (None outside a worker run):
# `progress()` is called in tight loops, and `self.request` alone costs ~0.7 µs.
_here = threading.local()


class ProgressTask(Task):  # type: ignore[misc]
    """A Celery task that streams its progress; see the module docstring."""

    @classmethod
    def bind(cls, app: Celery) -> Any:
        """Binding the class to an app connects the handlers: `task_cls=` alone streams."""
        signals.connect()
        return super().bind(app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        attempt = runtime.attempt_of(self.request.id)
        if attempt is not None and attempt.refused:
            # Cancelled (or failed WorkerLost) before this delivery ran: do not run it.
            log.info("job %s is already finished (%s): not running it", attempt.job_id,
                     attempt.refused)  # fmt: skip
            raise Ignore()
        outer = getattr(_here, "run", None)
        _here.run = (self, attempt)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            _here.run = outer

    def progress(
        self,
        step: str | None = None,
        percent: float | None = None,
        current: int | None = None,
        total: int | None = None,
        message: str | None = None,
    ) -> None:
        """Report progress (throttled). Outside a worker run this does nothing."""
        here = getattr(_here, "run", None)
        # The task running in this thread is nearly always `self`: no request lookup.
        attempt = here[1] if here is not None and here[0] is self else _running(self.request.id)
        if attempt is not None and not attempt.refused:
            check_report(step, percent, current, total, message)  # raises here, in the task
            attempt.throttle.report(step, percent, current, total, message)

    def track(
        self,
        items: Iterable[T],
        step: str | None = None,
        total: int | None = None,
        message: str | None = None,
    ) -> Iterator[T]:
        """`items`, counted as `current`/`total` (and percent, when the total is known) at
        a few tens of ns per item; `total` defaults to `len(items)` (track.py)."""
        here = getattr(_here, "run", None)
        attempt = here[1] if here is not None and here[0] is self else _running(self.request.id)
        return _tracked(attempt, items, step, total, message)

    def log(self, text: str) -> None:
        """A live log line on the job's stream (never coalesced; bounded per second by
        PROGRESS_LOG_LINES_PER_SECOND, the excess reported as a count). Outside a worker
        run it does nothing."""
        here = getattr(_here, "run", None)
        attempt = here[1] if here is not None and here[0] is self else _running(self.request.id)
        if attempt is not None and not attempt.refused:
            attempt.log(text)

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Celery's idiom; `PROGRESS` and custom states stream too (update_state.py)."""
        stream_update_state(self, task_id, state, meta)
        if not isinstance(self.backend, DisabledBackend):
            super().update_state(task_id=task_id, state=state, meta=meta, **kwargs)

    def attach_file(
        self, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Store a file for download with the job (bounded by PROGRESS_MAX_FILE_BYTES)."""
        job_id = self.request.id
        if job_id is None:
            raise RuntimeError("attach_file needs a running task (no task id)")
        files.attach_file(runtime.redis, runtime.settings, job_id, name, data, content_type)


def progress(
    step: str | None = None,
    percent: float | None = None,
    current: int | None = None,
    total: int | None = None,
    message: str | None = None,
) -> None:
    """`ProgressTask.progress` for the task running in this thread (unbound tasks)."""
    here = getattr(_here, "run", None)
    attempt = here[1] if here is not None else _running(_current_task_id())
    if attempt is not None and not attempt.refused:
        check_report(step, percent, current, total, message)
        attempt.throttle.report(step, percent, current, total, message)


def track(
    items: Iterable[T],
    step: str | None = None,
    total: int | None = None,
    message: str | None = None,
) -> Iterator[T]:
    """`ProgressTask.track` for the task running in this thread (unbound tasks)."""
    here = getattr(_here, "run", None)
    attempt = here[1] if here is not None else _running(_current_task_id())
    return _tracked(attempt, items, step, total, message)


def _tracked(
    attempt: RunningAttempt | None,
    items: Iterable[T],
    step: str | None,
    total: int | None,
    message: str | None,
) -> Iterator[T]:
    if attempt is None or attempt.refused:
        return iter(items)  # outside a worker run: the loop as it is
    check_report(step, None, None, total, message)
    throttle = attempt.throttle
    return track_items(
        items, lambda n, of: throttle.report(*count_report(n, of, step, message)), total
    )


def running_job_id() -> str | None:
    """The id of the Celery task running in this thread, if any."""
    here = getattr(_here, "run", None)
    return here[0].request.id if here is not None else _current_task_id()


def report_count(current: int, total: int | None, step: str | None) -> None:
    """A count for the task running in this thread, if any (progress_streamer.tqdm)."""
    here = getattr(_here, "run", None)
    attempt = here[1] if here is not None else _running(_current_task_id())
    if attempt is not None and not attempt.refused:
        attempt.throttle.report(*count_report(current, total, step))


def attach_file(name: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    """`ProgressTask.attach_file` for the task running in this thread (unbound tasks)."""
    job_id = _current_task_id()
    if job_id is None:
        raise RuntimeError("attach_file needs a running task (no task id)")
    files.attach_file(runtime.redis, runtime.settings, job_id, name, data, content_type)


def _current_task_id() -> str | None:
    task = current_task._get_current_object()  # the proxy itself is never None
    return None if task is None else task.request.id


def _running(job_id: str | None) -> RunningAttempt | None:
    attempt = runtime.attempt_of(job_id)
    if attempt is None:
        if job_id is not None and not signals.connected():
            _warn_unconnected_once()
        log.debug("progress of task %s outside a worker run: not published", job_id)
    elif attempt.refused:
        return None
    return attempt


@functools.cache
def _warn_unconnected_once() -> None:
    log.warning(
        "progress reported, but no progress_streamer handler is connected in this "
        "process, so nothing is published: call progress_streamer.celery.install(app) "
        "where the Celery app is defined (or use task_cls=ProgressTask)"
    )
