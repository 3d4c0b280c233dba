"""ARQ integration: worker settings whose jobs stream, and the web app's `ArqRunner`.

Job code reports through `ctx["progress"](...)` and `ctx["attach_file"](...)`.
"""

from __future__ import annotations

from progress_streamer.arq.runner import ArqRunner, publish_pending
from progress_streamer.arq.worker_settings import (
    progress_worker_settings,
    queue_name_of,
    with_progress,
)

__all__ = [
    "ArqRunner",
    "progress_worker_settings",
    "publish_pending",
    "queue_name_of",
    "with_progress",
]
