"""How a run's end becomes its last event, the same for Celery and ARQ.

- A failure shows the exception's class name and its message only (an `OSError`'s
  `strerror`, so file names stay in the worker's log), cut to `MAX_ERROR_MESSAGE_CHARS`.
- A result JSON cannot carry ends the job `failure`/`ResultNotSerializable`; one whose
  event is over `PROGRESS_MAX_EVENT_BYTES` ends it `failure`/`ResultTooLarge`.
- A failure event is never refused for its size: `shorter_errors` yields ever shorter
  versions of the error until one fits, so a job never hangs on its last event.
"""

from __future__ import annotations

from collections.abc import Iterator

from progress_streamer.protocol.event import ErrorInfo, EventNotSerializable, EventTooLarge

MAX_ERROR_MESSAGE_CHARS = 1000
MAX_ERROR_TYPE_CHARS = 200


def error_info(error_type: str, message: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> ErrorInfo:
    """An error whose message is cut to `limit` characters (marked with `...`)."""
    if len(message) > limit:
        message = message[: max(limit - 3, 0)] + "..."
    return ErrorInfo(type=error_type[:MAX_ERROR_TYPE_CHARS], message=message)


def error_of(exc: BaseException) -> ErrorInfo:
    """What browsers see of an exception: its class name and its message."""
    message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return error_info(type(exc).__name__, message)


def result_error(exc: EventNotSerializable | EventTooLarge) -> ErrorInfo:
    """The failure a refused `success` event turns into."""
    if isinstance(exc, EventNotSerializable):
        return error_info("ResultNotSerializable", f"the task's result {exc}")
    return error_info("ResultTooLarge", f"the task's result is too large: {exc}")


def shorter_errors(error: ErrorInfo) -> Iterator[ErrorInfo]:
    """The error, then shorter versions of it, down to an empty message."""
    yield error
    limit = min(len(error.message), MAX_ERROR_MESSAGE_CHARS)
    while limit > 0:
        limit //= 4
        yield error_info(error.type[:100], error.message, limit)
