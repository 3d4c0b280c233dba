"""The seed idiom, `self.update_state(state=..., meta=...)`, as a progress report.

Celery users already write this, with whatever meta their code has, and Celery accepts
it all; so must we, and a report must never fail the task:

- `PROGRESS` and any custom state (`DOWNLOADING`) stream as `progress`; a custom state's
  name, lower-cased, is the step unless `meta` names one. Celery's own states (`STARTED`,
  `SUCCESS`, ...) are left to the lifecycle handlers.
- `percent`, `current` and `total` may be numbers or numeric strings ("50"); `percent`
  comes from `current`/`total` when absent.
- A value that cannot be used (a `percent` of "half", a `step` that is a list, a meta key
  whose value is not JSON) is dropped, with one warning in the worker log per report.
- Keys beyond the progress fields go into the event's `data` object.

The explicit `self.progress()` helper stays strict (it raises on wrong types): it is new
API, and failing fast there helps.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from celery import states

from progress_streamer.celery.runtime import runtime
from progress_streamer.protocol.event import PROGRESS_FIELDS, Report

log = logging.getLogger(__name__)

PROGRESS_STATE = "PROGRESS"
LIFECYCLE_STATES = frozenset(states.ALL_STATES) | {states.RETRY, states.REJECTED, "IGNORED"}


def stream_update_state(task: Any, task_id: str | None, state: str | None, meta: Any) -> None:
    """Report `meta` for the running attempt of `task`, if the state is a progress one.
    Whatever happens, nothing is raised into the task."""
    if not isinstance(state, str) or (state != PROGRESS_STATE and state in LIFECYCLE_STATES):
        return
    try:
        job_id = task.request.id
        if task_id not in (None, job_id):
            return  # another task's state: not this run's progress
        attempt = runtime.attempt_of(job_id)
        if attempt is None or attempt.refused:
            return
        report, dropped = report_of(state, meta)
        if dropped:
            log.warning(
                "job %s: update_state(state=%r): ignored %s (not usable as progress)",
                job_id, state, ", ".join(dropped),
            )  # fmt: skip
        attempt.throttle.report(*report)
    except Exception as exc:
        log.warning("update_state(state=%r) not streamed: %s", state, exc)


def report_of(state: str, meta: Any) -> tuple[Report, list[str]]:
    """The report `meta` describes, and the names of the values that had to be dropped."""
    if not isinstance(meta, Mapping):
        meta, dropped = {}, ([] if meta is None else ["meta (not a mapping)"])
    else:
        dropped = []
    fields: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        raw = meta.get(name)
        value = None if raw is None else parse(raw)
        if raw is not None and value is None:
            dropped.append(f"{name}={raw!r}"[:80])
        fields[name] = value
    if fields["step"] is None and state != PROGRESS_STATE:
        fields["step"] = state.lower()
    current, total = fields["current"], fields["total"]
    if fields["percent"] is None and current is not None and total:
        fields["percent"] = round(min(max(current / total, 0.0), 1.0) * 100, 2)
    data = _extra(meta, dropped)
    return Report(**fields, data=data), dropped


def _extra(meta: Mapping[Any, Any], dropped: list[str]) -> dict[str, Any] | None:
    extra: dict[str, Any] = {}
    for key, value in meta.items():
        if key in PROGRESS_FIELDS:
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            dropped.append(f"{key!s:.40} (not JSON)")
            continue
        extra[str(key)] = value
    return extra or None


def _text(raw: Any) -> str | None:
    return raw if isinstance(raw, str) else None


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        try:
            raw = float(raw.strip().rstrip("%"))
        except ValueError:
            return None
    if not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    return float(raw)


def _percent(raw: Any) -> float | None:
    value = _number(raw)
    return value if value is not None and 0 <= value <= 100 else None


def _count(raw: Any) -> int | None:
    value = _number(raw)
    if value is None or value < 0 or value != int(value):
        return None
    return int(value)


_PARSERS = {
    "step": _text,
    "percent": _percent,
    "current": _count,
    "total": _count,
    "message": _text,
}
assert tuple(_PARSERS) == PROGRESS_FIELDS  # one parser per progress field, in order
