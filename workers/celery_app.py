"""The Celery app: `celery -A workers.celery_app worker` (the Procfile's `worker:` line).

A few lines on `progress_streamer.celery`. It imports no task code (`include=`
loads it when a worker starts), so the web app can send tasks by name. The settings are
read from the environment when the configuration is first needed, not at import.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from progress_streamer.celery import ProgressTask, install
from progress_streamer.celery.chord_backend import chord_backend_url
from progress_streamer.protocol import Settings

TASK_MODULES = ("workers.tasks.celery_demo",)


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # Our Redis state is the source of truth for a job. The result backend serves
        # chords alone (Celery counts a chord's header there; results are ignored).
        "result_backend": chord_backend(settings),
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": True,
    }


def chord_backend(settings: Settings) -> str | None:
    """The broker's Redis as the result backend Celery's chords need (one that follows no
    results: progress_streamer/celery/chord_backend.py); None when the broker is not Redis
    (then `POST /api/v1/jobs` chords fail to send)."""
    url = settings.broker_url
    return chord_backend_url(url) if url.startswith(("redis://", "rediss://", "unix://")) else None


def create_celery_app(settings: Settings | None = None, *, set_as_current: bool = True) -> Celery:
    """An app for `settings`, or for the environment's settings (read lazily)."""
    app = Celery(
        "workers", task_cls=ProgressTask, include=list(TASK_MODULES), set_as_current=set_as_current
    )
    app.add_defaults(lambda: celery_config(settings or Settings.from_env()))
    install(app, settings=settings)
    return app


app = create_celery_app()
