"""ARQ jobs for the tests, and their worker settings (`tests.support.arq_jobs.WorkerSettings`).

The jobs know nothing of the stream except `with_progress_job`, which uses the helper.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
from typing import Any

from arq.worker import Retry, func

from progress_streamer.arq.worker_settings import progress_worker_settings
from progress_streamer.protocol.settings import Settings


async def echo(ctx: dict[Any, Any], value: object) -> dict[str, object]:
    return {"echo": value, "ratio": 1.0, "rows": []}


async def with_progress_job(ctx: dict[Any, Any], total: int) -> str:
    for i in range(1, total + 1):
        await ctx["progress"](step="counting", percent=100 * i / total, current=i, total=total)
    await ctx["progress"](step="done", percent=100.0, message="counted")
    return "counted"


async def tracked_job(ctx: dict[Any, Any], n: int) -> int:
    return sum(1 for _ in ctx["track"](range(n), step="counting"))


async def tqdm_job(ctx: dict[Any, Any], n: int) -> int:
    import io

    from progress_streamer.tqdm import tqdm

    return sum(1 for _ in tqdm(range(n), desc="crunching", file=io.StringIO(), mininterval=0))


async def broken(ctx: dict[Any, Any]) -> None:
    raise ValueError("broken on purpose")


async def sleeper(ctx: dict[Any, Any], seconds: float) -> str:
    await ctx["progress"](step="sleeping", percent=1.0)
    await asyncio.sleep(seconds)
    return "slept"


async def not_json(ctx: dict[Any, Any]) -> object:
    return {"when": datetime.datetime(2026, 1, 1)}


async def too_large(ctx: dict[Any, Any]) -> str:
    return "x" * 100_000


async def retry_once(ctx: dict[Any, Any]) -> int:
    if ctx["job_try"] == 1:
        await ctx["progress"](step="first", percent=60.0)
        raise Retry(defer=0.05)
    await ctx["progress"](step="second", percent=10.0)
    return int(ctx["job_try"])


async def user_job_start(ctx: dict[Any, Any]) -> None:
    """A user's own hook: it still runs, chained after the stream's."""
    ctx["user_hook"] = True


async def saw_user_hook(ctx: dict[Any, Any]) -> bool:
    return bool(ctx.get("user_hook"))


FUNCTIONS = [
    echo,
    with_progress_job,
    tracked_job,
    tqdm_job,
    broken,
    sleeper,
    not_json,
    too_large,
    retry_once,
    saw_user_hook,
    func(sleeper, name="sleeper_with_timeout", timeout=0.5),
]


@functools.cache
def _from_env() -> dict[str, Any]:
    return progress_worker_settings(
        FUNCTIONS, settings=Settings.from_env(), poll_delay=0.05, on_job_start=user_job_start
    )


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        return _from_env()
    raise AttributeError(name)
