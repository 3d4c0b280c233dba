"""A result backend for chords alone: Celery's Redis backend, never following results.

Celery's chords need a result backend (it counts a chord's header there and sends the
callback from the worker that finishes the last header task). Celery's Redis backend
also makes every sender follow results over pub/sub: a group's sender subscribes to each
child's result until the result object is collected, and unsubscribes from the garbage
collector. Results here are ignored (the stream carries them), so this backend keeps the
chord bookkeeping and drops the following: no subscriptions, no connection used from
`__del__`. Use it as `result_backend = chord_backend_url(redis_url)`.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend

PATH = "progress_streamer.celery.chord_backend:ChordBackend"


def chord_backend_url(redis_url: str) -> str:
    """`result_backend` for `redis_url` (`redis://`, `rediss://` or `unix://`)."""
    return f"{PATH}+{redis_url}"


class ChordBackend(RedisBackend):  # type: ignore[misc]
    """`RedisBackend` that never subscribes to results (see the module docstring)."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def remove_pending_result(self, result: Any) -> Any:
        return result
