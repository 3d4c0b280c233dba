"""ARQ worker settings whose jobs stream: `progress_worker_settings` and `with_progress`.

Every job function is wrapped so that its run publishes `started`, keeps a lease, and ends
with exactly one of `success`, `failure` or `revoked`, without changes to job code. ARQ's
`on_job_end` hook is not told how the job ended, so the wrapper decides, where the
outcome is seen first-hand. Deliberate choices:

- ARQ reads a settings class's own `__dict__` only (inherited attributes are ignored), so
  there is no base class to subclass: `with_progress` rewrites a class (or dict) in place.
- A `CancelledError` in a job is one of three things: ARQ's timeout (the run outlived its
  timeout: `failure`/`TimeoutError`), the worker shutting down (ARQ re-runs the job, so
  nothing is published; with `retry_jobs=False`, `failure`/`CancelledError`), or an abort
  (`revoked`, refused when our cancel already published it).
- The queue defaults to `<PROGRESS_KEY_PREFIX>:arq:queue`, so deployments (and tests)
  sharing one Redis under different prefixes never run each other's jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job, ResultNotFound
from arq.utils import to_seconds
from arq.worker import Function, Retry, func

from progress_streamer.arq.run import JobAlreadyFinished, JobRun
from progress_streamer.protocol.connections import acheck_server, async_client
from progress_streamer.protocol.keys import is_valid_job_id
from progress_streamer.protocol.outcome import error_info
from progress_streamer.protocol.publisher import AsyncPublisher
from progress_streamer.protocol.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T", dict[str, Any], type)
Hook = Callable[[dict[Any, Any]], Awaitable[Any]]

PUBLISHER = "progress_publisher"  # ctx key of the worker's AsyncPublisher
RUN_TASK = "progress_run_task"  # ctx key of ARQ's run_job task (tells shutdown from abort)
RUN_STARTED = "progress_run_started"  # ctx key: loop time when ARQ began the run
MARKER = "progress_streaming"  # set on the `on_startup` hook of rewritten settings
# Connections an ARQ worker holds to the progress Redis (per node on a cluster): one per
# running job at most (ARQ's `max_jobs` defaults to 10) plus the lease heartbeats.
PUBLISHER_POOL_SIZE = 32
_ARQ_DEFAULTS = {"job_timeout": 300.0, "max_tries": 5, "retry_jobs": True}


async def abort_jobs(pool: ArqRedis, queue_name: str, job_ids: list[str]) -> None:
    """Ask ARQ to abort each job (a running one is cancelled at the worker's next poll; a
    queued one is dropped when picked), without waiting for the outcome."""
    for job_id in job_ids:
        try:
            await Job(job_id, pool, _queue_name=queue_name).abort(timeout=0, poll_delay=0)
        except (TimeoutError, ResultNotFound):
            pass


def queue_name_of(settings: Settings) -> str:
    """The ARQ queue of the project's jobs: one per key prefix."""
    return f"{settings.key_prefix}:arq:queue"


def progress_worker_settings(
    functions: Sequence[Any], *, settings: Settings | None = None, **options: Any
) -> dict[str, Any]:
    """A complete ARQ settings dict: Redis and queue from `settings`, jobs that stream.

    `options` are any other `arq.worker.Worker` arguments (hooks included: they are
    chained after ours). Use it as `WorkerSettings = progress_worker_settings([...])`.
    """
    settings = settings or Settings.from_env()
    base = {
        "redis_settings": RedisSettings.from_dsn(settings.arq_url),
        "queue_name": queue_name_of(settings),
        **options,
        "functions": list(functions),
    }
    return with_progress(base, settings=settings)


def with_progress(worker_settings: T, *, settings: Settings | None = None) -> T:
    """Make an existing ARQ settings class (use as a decorator) or dict stream its jobs.

    `settings=None` reads the environment when the worker starts, not at import.
    """
    if isinstance(worker_settings, dict):
        if _is_rewritten(worker_settings):
            return worker_settings
        return {**worker_settings, **_progress_options(worker_settings, settings)}
    if _is_rewritten(vars(worker_settings)):
        return worker_settings
    changes = _progress_options(dict(vars(worker_settings)), settings)
    for name, value in changes.items():
        setattr(worker_settings, name, value)
    return worker_settings


def _is_rewritten(options: Mapping[str, Any]) -> bool:
    return getattr(options.get("on_startup"), MARKER, False) is True


def _progress_options(options: Mapping[str, Any], settings: Settings | None) -> dict[str, Any]:
    policy = {key: options.get(key, default) for key, default in _ARQ_DEFAULTS.items()}
    on_startup = _chain(_starter(settings), options.get("on_startup"))
    setattr(on_startup, MARKER, True)  # how `with_progress` knows it was applied already
    return {
        "functions": [_tracked(f, policy) for f in options.get("functions", ())],
        "allow_abort_jobs": options.get("allow_abort_jobs", True),
        "on_startup": on_startup,
        "on_shutdown": _chain(options.get("on_shutdown"), _close_publisher),
        "on_job_start": _chain(_remember_run_task, options.get("on_job_start")),
    }


def _chain(first: Hook | None, second: Hook | None) -> Hook | None:
    if first is None or second is None:
        return first or second

    async def chained(ctx: dict[Any, Any]) -> None:
        await first(ctx)
        await second(ctx)

    return chained


def _starter(settings: Settings | None) -> Hook:
    async def start_publisher(ctx: dict[Any, Any]) -> None:
        resolved = settings or Settings.from_env()
        client = async_client(resolved, max_connections=PUBLISHER_POOL_SIZE)
        await acheck_server(client)  # a cluster's primaries are Redis >= 7.0
        publisher = AsyncPublisher(client, resolved)
        # A parent's end revokes the unfinished children (fail_fast): abort the running ones.
        pool, queue = ctx["redis"], queue_name_of(resolved)
        publisher.families.revoke_tasks = lambda ids: abort_jobs(pool, queue, ids)
        ctx[PUBLISHER] = publisher

    return start_publisher


async def _close_publisher(ctx: dict[Any, Any]) -> None:
    publisher = ctx.pop(PUBLISHER, None)
    if publisher is not None:
        publisher.families.close()
        await publisher.redis.aclose()


async def _remember_run_task(ctx: dict[Any, Any]) -> None:
    # Runs before ARQ starts its timeout clock, so a timed-out run's elapsed time, measured
    # from here, is never short of the timeout.
    ctx[RUN_TASK] = asyncio.current_task()
    ctx[RUN_STARTED] = asyncio.get_running_loop().time()


@dataclasses.dataclass(frozen=True, slots=True)
class _Policy:
    """What ARQ will do after a run, as far as the stream needs to know."""

    timeout_s: float
    max_tries: int
    retry_jobs: bool


def _tracked(function: Any, defaults: dict[str, Any]) -> Function:
    arq_function = func(function)
    if getattr(arq_function.coroutine, "progress_tracked", False):
        return arq_function
    policy = _Policy(
        timeout_s=to_seconds(arq_function.timeout_s or defaults["job_timeout"]) or 0.0,
        max_tries=arq_function.max_tries or defaults["max_tries"],
        retry_jobs=bool(defaults["retry_jobs"]),
    )
    return dataclasses.replace(arq_function, coroutine=_wrap(arq_function.coroutine, policy))


def _wrap(coroutine: Any, policy: _Policy) -> Any:
    @functools.wraps(coroutine)
    async def run_with_progress(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
        publisher: AsyncPublisher | None = ctx.get(PUBLISHER)
        if publisher is None or not is_valid_job_id(ctx.get("job_id")):
            ctx.setdefault("progress", _ignore)
            ctx.setdefault("attach_file", _ignore)
            return await coroutine(ctx, *args, **kwargs)
        loop = asyncio.get_running_loop()
        started = ctx.get(RUN_STARTED, loop.time())
        run = JobRun(publisher, ctx["job_id"], ctx.get("job_try") or 1)
        await run.start()
        ctx["progress"], ctx["attach_file"] = run.progress, run.attach_file
        ctx["track"], ctx["log"] = run.track, run.log
        try:
            result = await coroutine(ctx, *args, **kwargs)
        except asyncio.CancelledError:
            await _shielded(_end_cancelled(run, ctx, policy, loop.time() - started))
            raise
        except Retry as exc:
            await _shielded(_end_retry(run, ctx, policy, exc))
            raise
        except Exception as exc:
            await _shielded(run.fail(exc))
            raise
        else:
            await _shielded(run.succeed(result))
            return result
        finally:
            await _shielded(run.stop())

    run_with_progress.progress_tracked = True  # type: ignore[attr-defined]
    return run_with_progress


async def _end_cancelled(run: JobRun, ctx: dict[Any, Any], policy: _Policy, elapsed: float) -> None:
    run_task: asyncio.Task[Any] | None = ctx.get(RUN_TASK)
    if policy.timeout_s and elapsed >= policy.timeout_s:
        await run.fail_with(
            error_info("TimeoutError", f"the job ran over its {policy.timeout_s:g} s timeout")
        )
    elif run_task is not None and run_task.cancelling():
        if not policy.retry_jobs:
            await run.fail_with(
                error_info("CancelledError", "the worker shut down while the job ran")
            )
        # else: ARQ runs the job again; if no worker does, the lease rule ends it.
    else:
        await run.revoke()


async def _end_retry(run: JobRun, ctx: dict[Any, Any], policy: _Policy, exc: Retry) -> None:
    job_try = int(ctx.get("job_try") or 1)
    if not policy.retry_jobs:
        await run.fail(exc)
    elif job_try >= policy.max_tries:
        await run.fail_with(
            error_info("JobExecutionFailed", f"max {policy.max_tries} retries exceeded")
        )
    else:
        defer = (exc.defer_score or 0) / 1000
        await run.wait_for_rerun(defer, f"retrying (try {job_try + 1} of {policy.max_tries})")


async def _shielded(step: Awaitable[Any]) -> None:
    """Finish publishing even if ARQ cancels the job again meanwhile; never mask the job's
    own outcome with a publishing error (the lease rule ends a job left unfinished)."""
    try:
        await asyncio.shield(asyncio.ensure_future(step))
    except Exception:
        log.exception("publishing the end of a job failed")


async def _ignore(*args: Any, **kwargs: Any) -> None:
    """The helpers of a job the stream does not track (no valid id, or no publisher)."""


__all__ = [
    "JobAlreadyFinished",
    "progress_worker_settings",
    "queue_name_of",
    "with_progress",
]
