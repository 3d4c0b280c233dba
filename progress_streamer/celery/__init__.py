"""Celery integration: every task of an app streams its lifecycle and progress.

`install(app)` connects the signal handlers to a user's own Celery app; a task class of
`ProgressTask` (`task_cls="progress_streamer.celery:ProgressTask"`) does so by itself.
`CeleryRunner` is what the web app enqueues and cancels Celery jobs with. `start(canvas)`
sends a group, chord or chain as one parent job with children (one bar for many tasks).
"""

from __future__ import annotations

from progress_streamer.celery.canvas import StartedFamily, start
from progress_streamer.celery.chord_backend import ChordBackend, chord_backend_url
from progress_streamer.celery.installer import install
from progress_streamer.celery.runner import CeleryRunner
from progress_streamer.celery.task import ProgressTask, attach_file, progress, track

__all__ = [
    "CeleryRunner",
    "ChordBackend",
    "ProgressTask",
    "StartedFamily",
    "attach_file",
    "chord_backend_url",
    "install",
    "progress",
    "start",
    "track",
]
