"""`progress_streamer.tqdm.tqdm`: a tqdm bar whose count also streams to the running job.

A library's own loop with a tqdm bar inside a task (`from tqdm import tqdm` in code you
do not own) streams too once it uses this class; in your own code it is a one-line
change. Whenever tqdm redraws the bar (about every 0.1 s by default) and when it closes,
the count goes to the job: `current`, `total`, and `percent` when the total is known;
the bar's description is the step. Outside a job (Celery task or ARQ job) it is plain
tqdm. A bar created with `disable=True` never redraws, so it streams nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm import tqdm as _tqdm

__all__ = ["tqdm"]

Reporter = Callable[[int, int | None, str | None], None]


class tqdm(_tqdm):  # type: ignore[misc]
    """tqdm, streaming its count to the job running it; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stream_to = _reporter()
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> Any:
        shown = super().display(msg, pos)
        self._stream()
        return shown

    def close(self) -> None:
        if not getattr(self, "disable", True):
            self._stream()
        super().close()

    def _stream(self) -> None:
        report = getattr(self, "_stream_to", None)
        if report is not None:
            total = int(self.total) if self.total else None
            report(int(self.n), total, self.desc.rstrip(": ") or None)


def _reporter() -> Reporter | None:
    """Where counts go: the Celery task of this thread, else the ARQ job of this asyncio
    task, else nowhere. Imported lazily: a web process never loads Celery or ARQ."""
    try:
        from progress_streamer.celery.task import report_count, running_job_id
    except ImportError:
        pass
    else:
        if running_job_id() is not None:
            return report_count
    try:
        from progress_streamer.arq.run import current_run
    except ImportError:
        return None
    run = current_run.get()
    return None if run is None else run.report_count
