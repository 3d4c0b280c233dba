"""The project's ARQ worker: `arq workers.arq_worker.WorkerSettings` (the Procfile's `arq:`).

It runs the demo tasks on the queue of `PROGRESS_KEY_PREFIX` (`progress_streamer.arq`).
`WorkerSettings` is built on first access (PEP 562 module `__getattr__`) rather than at
import, so importing this module never reads the environment; ARQ's CLI reads it at start.
"""

from __future__ import annotations

import functools
from typing import Any

from arq.worker import func

from progress_streamer.arq import progress_worker_settings
from progress_streamer.protocol import Settings
from workers.tasks.arq_demo import demo_fail, demo_report

DEMO_FUNCTIONS = (
    func(demo_report, name="demo.report"),
    func(demo_fail, name="demo.fail"),
)


def build_worker_settings(settings: Settings, **options: Any) -> dict[str, Any]:
    """The demo worker's ARQ settings for `settings` (tests pass their own)."""
    return progress_worker_settings(DEMO_FUNCTIONS, settings=settings, **options)


@functools.cache
def _from_env() -> dict[str, Any]:
    return build_worker_settings(Settings.from_env())


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        return _from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
