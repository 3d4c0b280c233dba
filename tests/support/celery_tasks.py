"""Tasks for the Celery tests, loaded into the test worker with `-I tests.support.celery_tasks`."""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

from progress_streamer.celery import task as celery_task
from progress_streamer.celery.runtime import runtime
from workers.celery_app import app


@app.task(name="tests.plain")
def plain(x: int, y: int) -> dict[str, int]:
    """A task with no progress code at all."""
    return {"sum": x + y}


@app.task(name="tests.mark")
def mark(key: str) -> None:
    """Sets `key` in Redis: proof that the task body ran."""
    runtime.redis.set(key, os.getpid(), ex=60)


@app.task(bind=True, name="tests.update_state")
def update_state(self: Any, n: int) -> str:
    """The seed idiom, unchanged."""
    self.update_state(state="PROGRESS", meta={"step": "fetching", "percent": 0})
    for i in range(1, n + 1):
        self.update_state(state="PROGRESS", meta={"step": "rendering", "current": i, "total": n})
    return "done"


@app.task(bind=True, name="tests.helper")
def helper(self: Any) -> str:
    self.progress(step="one", percent=10, current=1, total=3, message="first")
    self.progress(step="two", percent=50.5, current=2, total=3)
    self.progress(step="two", percent=75.0, current=3, total=3, message="last")
    return "ok"


@app.task(name="tests.boom")
def boom() -> None:
    raise ValueError("the input was wrong")


@app.task(bind=True, name="tests.retry", max_retries=5)
def retry(self: Any, times: int) -> dict[str, int]:
    self.progress(step="trying", percent=50)
    if self.request.retries < times:
        raise self.retry(countdown=0.05)
    return {"runs": self.request.retries + 1}


@app.task(bind=True, name="tests.slow")
def slow(self: Any, seconds: float) -> str:
    """Reports its pid, then keeps reporting progress until `seconds` passed."""
    self.progress(step="sleeping", percent=0, message=f"pid {os.getpid()}")
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        self.progress(step="sleeping", percent=min(100.0, 100 * elapsed / seconds))
        time.sleep(0.02)
    return "woke up"


@app.task(name="tests.not_json")
def not_json() -> dict[str, Any]:
    return {"when": datetime.datetime(2026, 1, 1)}


@app.task(name="tests.too_large")
def too_large() -> str:
    return "x" * 100_000


@app.task(bind=True, name="tests.bad_progress")
def bad_progress(self: Any) -> list[str]:
    """Oversized and invalid reports raise in the task, which goes on."""
    caught = []
    for report in ({"message": "x" * 100_000}, {"percent": 101}, {"current": -1}):
        try:
            self.progress(step="s", **report)
        except ValueError as exc:  # EventTooLarge is a ValueError too
            caught.append(type(exc).__name__)
    self.progress(step="s", percent=5)
    return caught


@app.task(name="tests.unbound")
def unbound() -> str:
    """An unbound task using the module-level helpers."""
    celery_task.progress(step="unbound", percent=50, message="half")
    celery_task.attach_file("u.txt", b"hello", "text/plain")
    return "ok"


@app.task(bind=True, name="tests.nested")
def nested(self: Any, inner_job: str) -> str:
    """Runs another task in its own thread (eagerly) between two reports of its own."""
    self.progress(step="outer", percent=10)
    inner.apply(task_id=inner_job)
    self.progress(step="outer again", percent=90)
    return "ok"


@app.task(bind=True, name="tests.inner")
def inner(self: Any) -> str:
    self.progress(step="inner", percent=50)
    return "inner"


@app.task(bind=True, name="tests.tracked")
def tracked(self: Any, n: int, sized: bool) -> int:
    """A hot loop counted by `self.track`, over a list or over a generator."""
    items = list(range(n)) if sized else (i for i in range(n))
    return sum(1 for _ in self.track(items, step="counting"))


@app.task(name="tests.tracked_unbound")
def tracked_unbound(n: int) -> int:
    """The same without `self`: `progress_streamer.celery.track`."""
    return sum(1 for _ in celery_task.track(range(n), step="counting"))


@app.task(bind=True, name="tests.logs")
def logs(self: Any, n: int) -> str:
    """`n` log lines in one burst."""
    for i in range(n):
        self.log(f"line {i}")
    return "logged"


@app.task(bind=True, name="tests.steady")
def steady(self: Any, steps: int, step_ms: int) -> str:
    """Steady progress, for the time-left estimate."""
    for _ in self.track(range(steps), step="steady"):
        time.sleep(step_ms / 1000)
    return "steady"


@app.task(name="tests.tqdm_loop")
def tqdm_loop(n: int) -> int:
    """A loop with a library's own tqdm bar, made to stream by the adapter."""
    import io

    from progress_streamer.tqdm import tqdm

    count = 0
    for _ in tqdm(range(n), desc="crunching", file=io.StringIO(), mininterval=0):
        count += 1
    return count
