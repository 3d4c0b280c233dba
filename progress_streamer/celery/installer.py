"""`install(app)`: make a user's own Celery app stream, whatever its task class.

- Connects every signal handler (signals.py): lifecycle events for every task of the
  process (Celery's signals are process-wide).
- Makes `self.update_state(...)` stream from every task of that app, plain
  `@app.task(bind=True)` and `@shared_task(bind=True)` ones included, by wrapping the
  app's base task class's `update_state` (tasks defined before or after the call
  inherit it). `ProgressTask` needs no wrapping: its own `update_state` streams.
- Changes nothing else: the app's result backend, serializers and other settings stay
  the user's, so `AsyncResult(...).get()` works as before.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from celery.backends.base import DisabledBackend

from progress_streamer.celery import signals
from progress_streamer.celery.runtime import runtime
from progress_streamer.celery.task import ProgressTask
from progress_streamer.celery.update_state import stream_update_state
from progress_streamer.protocol.settings import Settings

_WRAPPED = "_progress_streamer_update_state"


def install(app: Celery | None = None, *, settings: Settings | None = None) -> None:
    """Make `app`'s tasks stream (idempotent). `settings` replaces the environment's
    (`Settings.from_env()`, read when first needed)."""
    if settings is not None:
        runtime.configure(settings)
    signals.connect()
    if app is not None:
        _stream_update_state(app.Task)


def _stream_update_state(task_cls: Any) -> None:
    if issubclass(task_cls, ProgressTask) or getattr(task_cls, _WRAPPED, False):
        return
    original = task_cls.update_state

    @functools.wraps(original)
    def update_state(
        self: Any, task_id: str | None = None, state: str | None = None, meta: Any = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        stream_update_state(self, task_id, state, meta)
        if isinstance(self.backend, DisabledBackend):
            return None  # no result backend: Celery would raise; a report must not fail
        return original(self, task_id=task_id, state=state, meta=meta, **kwargs)

    task_cls.update_state = update_state
    setattr(task_cls, _WRAPPED, True)
