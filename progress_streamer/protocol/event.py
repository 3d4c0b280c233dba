"""The event: one JSON object per report, byte-for-byte the same everywhere it goes.

A worker builds an `EventDraft` (everything but `seq`) and encodes it into two halves;
the publish script in Redis glues them around the `seq`, `epoch` and `attempt` it
assigns, so the JSON is never decoded and re-encoded in Lua (cjson would turn `75.0`
into `75` and `[]` into `{}`). `epoch` names the incarnation of the job's state the
event belongs to (`protocol/incarnation.py`).
Readers decode with `decode_event`, which rejects anything malformed with
`MalformedEvent` instead of crashing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from progress_streamer.protocol.keys import is_valid_job_id
from progress_streamer.protocol.status import JobStatus

# Room the script needs for `"seq":<n>,"epoch":<e>,"attempt":<a>,` (each at most 16 digits).
SEQ_ROOM = len('"seq":,"epoch":,"attempt":,') + 48

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class Report(NamedTuple):
    """The progress fields of an event, defined once: the worker helpers take them in this
    order, the throttle holds them as this tuple, and the status endpoint's `progress`
    object has exactly the first five as keys (`PROGRESS_FIELDS`); `data` is shown beside
    it."""

    step: str | None  #: the current stage's name ("fetching", "rendering")
    percent: float | None  #: 0..100, never decreasing within one attempt
    current: int | None  #: optional count done ("page 3 ...")
    total: int | None  #: ... "of 40"
    message: str | None  #: short human text
    data: dict[str, Any] | None = None  #: extra keys a task reported (`update_state` meta)


PROGRESS_FIELDS: tuple[str, ...] = Report._fields[:5]
OPTIONAL_FIELDS = ("rate", "eta_seconds", "log", "children")  # in an event's JSON only when set


class MalformedEvent(ValueError):
    """Bytes from Redis that are not a valid event."""


class EventTooLarge(ValueError):
    """An event whose JSON is over `PROGRESS_MAX_EVENT_BYTES`."""


class EventNotSerializable(TypeError):
    """An event with a value JSON cannot carry (an object, NaN, infinity...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    """What browsers see of a failure: the exception's class name and its message."""

    type: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


@dataclass(frozen=True, slots=True, kw_only=True)
class EventDraft:
    """An event before Redis has given it a `seq`."""

    job_id: str
    status: JobStatus
    attempt: int | None = None  # None: the job's current attempt (the script fills it in)
    step: str | None = None
    percent: float | None = None
    current: int | None = None
    total: int | None = None
    message: str | None = None
    result: Any = None
    error: ErrorInfo | None = None
    ts: float = 0.0
    data: dict[str, Any] | None = None
    # Absent from the JSON until set (SPEC.md: "absent until estimable"; a log line).
    rate: float | None = None  # units (of `current`, else percent) per second
    eta_seconds: float | None = None
    log: str | None = None
    children: dict[str, int] | None = None  # a parent job's counts (protocol/family.py)

    def encode(self, max_bytes: int) -> tuple[bytes, bytes]:
        """The JSON's two halves, around where the script puts `"seq":N,"epoch":E,"attempt":A,`.

        Raises `EventNotSerializable` or `EventTooLarge`; nothing is published then.
        """
        check_fields(self)
        body = {
            "status": self.status.value,
            **{name: getattr(self, name) for name in PROGRESS_FIELDS},
            "result": self.result,
            "error": None if self.error is None else self.error.as_dict(),
            "data": self.data,
            # `ts` ends an event without optional fields: the publish script writes its
            # own `StateLost` event by appending the time there (incarnation.py).
            "ts": self.ts,
        }
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        try:
            tail = _encoder.encode(body)[1:].encode()
        except (TypeError, ValueError) as exc:
            raise EventNotSerializable(f"the {self.status} event is not JSON: {exc}") from None
        head = b'{"job_id":"' + self.job_id.encode() + b'",'
        size = len(head) + len(tail) + SEQ_ROOM
        if size > max_bytes:
            raise EventTooLarge(
                f"the {self.status} event is about {size} bytes, over the "
                f"{max_bytes}-byte limit (PROGRESS_MAX_EVENT_BYTES)"
            )
        return head, tail


def check_fields(draft: EventDraft) -> None:
    """Reject values SPEC.md's event table does not allow, with a clear message."""
    if not is_valid_job_id(draft.job_id):
        raise ValueError(f"invalid job id {draft.job_id!r}")
    if draft.attempt is not None and (type(draft.attempt) is not int or draft.attempt < 1):
        raise ValueError(f"attempt must be an int >= 1, not {draft.attempt!r}")
    if draft.log is not None and not isinstance(draft.log, str):
        raise ValueError(f"log must be a string, not {type(draft.log).__name__}")
    if draft.data is not None and not isinstance(draft.data, dict):
        raise ValueError(f"data must be a JSON object or None, not {type(draft.data).__name__}")
    check_report(draft.step, draft.percent, draft.current, draft.total, draft.message)


def check_report(
    step: object, percent: object, current: object, total: object, message: object
) -> None:
    """The progress fields' rules, without building a draft: the Celery and ARQ helpers
    call it on every report, before the throttle, so a bad value raises in the task.

    It runs a million times in a tight loop, so the usual values (built-in types in
    range) pass one expression; anything else gets the full checks and their messages.
    """
    if (  # `__class__ is`, not isinstance() or type(): half the cost, and bool is not int
        (
            percent is None
            or (
                (percent.__class__ is float or percent.__class__ is int) and 0.0 <= percent <= 100.0
            )
        )
        and (current is None or (current.__class__ is int and current >= 0))
        and (total is None or (total.__class__ is int and total >= 0))
        and (step is None or step.__class__ is str)
        and (message is None or message.__class__ is str)
    ):
        return  # NaN and infinities fail the range test, so they take the full checks
    if percent is not None and not _is_percent(percent):
        raise ValueError(f"percent must be a number in 0..100 or None, not {percent!r}")
    for name, count in (("current", current), ("total", total)):
        if count is not None and (type(count) is not int or count < 0):
            raise ValueError(f"{name} must be an int >= 0 or None, not {count!r}")
    for name, text in (("step", step), ("message", message)):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{name} must be a string or None, not {type(text).__name__}")


def _is_percent(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 100
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressEvent:
    """An event as published: a draft plus its `seq` and `epoch`, and the exact JSON bytes."""

    job_id: str
    seq: int
    epoch: int  # the incarnation of the job's state (0: published before epochs existed)
    status: JobStatus
    attempt: int
    step: str | None
    percent: float | None
    current: int | None
    total: int | None
    message: str | None
    result: Any
    error: ErrorInfo | None
    ts: float
    raw: bytes
    data: dict[str, Any] | None = None
    rate: float | None = None
    eta_seconds: float | None = None
    log: str | None = None
    children: dict[str, int] | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def report(self) -> Report:
        return Report(self.step, self.percent, self.current, self.total, self.message, self.data)


def decode_event(raw: bytes | str) -> ProgressEvent:
    """Parse and validate one event's JSON; raise `MalformedEvent` if it is not one."""
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        obj = json.loads(data)
    except RecursionError:  # nesting deeper than the parser's stack: not an event
        raise MalformedEvent("JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedEvent("not a JSON object")
    try:
        return _from_dict(obj, data)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedEvent(f"bad event field: {exc}") from None


def _from_dict(obj: dict[str, Any], raw: bytes) -> ProgressEvent:
    job_id, seq, attempt = obj["job_id"], obj["seq"], obj["attempt"]
    if not is_valid_job_id(job_id):
        raise ValueError("job_id")
    if type(seq) is not int or seq < 1 or type(attempt) is not int or attempt < 1:
        raise ValueError("seq/attempt")
    epoch = obj.get("epoch", 0)
    if type(epoch) is not int or epoch < 0:
        raise ValueError("epoch")
    percent = obj.get("percent")
    if percent is not None and not _is_percent(percent):
        raise ValueError("percent")
    error = obj.get("error")
    ts = obj.get("ts", 0.0)
    if not isinstance(ts, int | float):
        raise ValueError("ts")
    return ProgressEvent(
        job_id=job_id,
        seq=seq,
        epoch=epoch,
        status=JobStatus(obj["status"]),
        attempt=attempt,
        step=_opt(obj.get("step"), str),
        percent=percent,
        current=_opt(obj.get("current"), int),
        total=_opt(obj.get("total"), int),
        message=_opt(obj.get("message"), str),
        result=obj.get("result"),
        error=None if error is None else _error(error),
        ts=float(ts),
        raw=raw,
        data=_opt(obj.get("data"), dict),
        rate=_number_or_none(obj.get("rate")),
        eta_seconds=_number_or_none(obj.get("eta_seconds")),
        log=_opt(obj.get("log"), str),
        children=_opt(obj.get("children"), dict),
    )


def _error(error: Any) -> ErrorInfo:
    if not isinstance(error, dict):
        raise TypeError("error must be an object")
    return ErrorInfo(type=str(error["type"]), message=str(error["message"]))


def _number_or_none(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _opt(value: Any, kind: type) -> Any:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def join_event(head: bytes, seq: int, attempt: int, tail: bytes, epoch: int = 0) -> bytes:
    """The whole JSON, glued as the publish script glues it."""
    return b"".join((head, b'"seq":%d,"epoch":%d,"attempt":%d,' % (seq, epoch, attempt), tail))


def encode_event(draft: EventDraft, seq: int, attempt: int, epoch: int = 0) -> bytes:
    """A whole event's JSON, for events made outside Redis (the `StateLost` end)."""
    head, tail = draft.encode(1 << 30)
    return join_event(head, seq, attempt, tail, epoch)
