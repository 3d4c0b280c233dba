"""Enqueue and cancel ARQ jobs the way the stream expects: `ArqRunner`, `publish_pending`.

The web app's runner interface is synchronous (it calls runners in a worker thread), so
`enqueue`/`cancel` run a short event loop of their own, with connections of their own,
per call. Asyncio callers use `aenqueue`/`acancel` on one long-lived event loop (and
`aclose` at the end). Both publish through the publish script first: `pending` before
the job exists in ARQ's queue, `revoked` before ARQ is asked to abort it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job
from arq.jobs import JobStatus as ArqStatus

from progress_streamer.arq.worker_settings import abort_jobs, queue_name_of
from progress_streamer.protocol.connections import AsyncRedis, async_client, queue_pool
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.family import ChildPlan, FamilyKind, FamilyPlan, arecord_family
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.outcome import error_info, error_of
from progress_streamer.protocol.publisher import AsyncPublisher, PublishOutcome
from progress_streamer.protocol.runner import ChildJob, JobRunner, QueueStatus, UnsupportedFamily
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus

log = logging.getLogger(__name__)

R = TypeVar("R")

# The web process's shared ARQ connections (the settler, status fallbacks, asyncio
# enqueues): bounded, and a caller beyond the bound waits for a free one rather than
# opening more (redis-py's default pool has no bound worth the name).
SHARED_POOL_SIZE = 8
SHARED_POOL_TIMEOUT = 10.0

# ARQ's own view of a job, as one of our statuses (None: ARQ does not know the job).
# `complete` covers success, failure and abort alike: our snapshot says which.
ARQ_STATUSES: dict[ArqStatus, JobStatus | None] = {
    ArqStatus.deferred: JobStatus.PENDING,
    ArqStatus.queued: JobStatus.PENDING,
    ArqStatus.in_progress: JobStatus.STARTED,
    ArqStatus.complete: None,
    ArqStatus.not_found: None,
}


def _json_or_none(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value


class EnqueueRefused(RuntimeError):
    """ARQ already holds a job (or its result) with this id."""


async def publish_pending(
    target: AsyncPublisher | redis.asyncio.Redis, job_id: str, settings: Settings | None = None
) -> PublishOutcome:
    """Publish `pending` for a job you are about to enqueue with your own `enqueue_job`:

        await publish_pending(arq_redis, job_id)
        await arq_redis.enqueue_job("my_job", _job_id=job_id, ...)

    `target` is a publisher, or any asyncio Redis client of the progress Redis (an
    `ArqRedis` when ARQ uses the same Redis); `settings` default to the environment's.
    """
    if not isinstance(target, AsyncPublisher):
        target = AsyncPublisher(target, settings or Settings.from_env())
    return await target.publish(EventDraft(job_id=job_id, status=JobStatus.PENDING))


class ArqRunner(JobRunner):
    """The web app's ARQ runner: `pending` + enqueue, `revoked` + abort."""

    def __init__(self, settings: Settings, *, queue_name: str | None = None) -> None:
        self.settings = settings
        self.keyspace = KeySpace(settings.key_prefix)
        self.queue_name = queue_name or queue_name_of(settings)
        self.pending_index = self.keyspace.arq_pending(self.queue_name)
        # ARQ's queue and our progress state share one Redis unless REDIS_URL is a cluster
        # or ARQ_REDIS_URL names another: then the progress writes get a client of their own.
        self._one_redis = not settings.cluster and settings.arq_url == settings.redis_url
        self._pool: ArqRedis | None = None
        self._publisher: AsyncPublisher | None = None

    # --- synchronous, for a worker thread (the web app's `JobRunner` protocol) ---

    def enqueue(self, job_id: str, task: str, params: dict[str, Any]) -> None:
        """Publish `pending`, then put the job on ARQ's queue. Not from an event loop."""
        self._run_once(lambda pool, publisher: self._enqueue(pool, publisher, job_id, task, params))

    def enqueue_family(
        self, parent_id: str, kind: str, children: list[ChildJob], fail_fast: bool
    ) -> None:
        """A group: record the parent, then enqueue every child. Chains and chords are
        refused (`UnsupportedFamily`): ARQ has no canvas, and this is no workflow engine."""
        if kind != FamilyKind.GROUP:
            raise UnsupportedFamily(
                f"the ARQ runner runs groups only, not a {kind}: ARQ has no canvas to run "
                'one task after another; send it with "runner": "celery"'
            )
        self._run_once(
            lambda pool, publisher: self._enqueue_group(
                pool, publisher, parent_id, children, fail_fast
            )
        )

    def cancel(self, job_id: str) -> PublishOutcome:
        """Publish `revoked` (refused when already terminal: then nothing else), then abort."""
        return self._run_once(lambda pool, publisher: self._cancel(pool, publisher, job_id))

    # --- asyncio, for callers on one long-lived loop ---

    async def aenqueue(self, job_id: str, task: str, params: dict[str, Any]) -> None:
        pool = await self._shared_pool()
        await self._enqueue(pool, self._shared_publisher(pool), job_id, task, params)

    async def acancel(self, job_id: str) -> PublishOutcome:
        pool = await self._shared_pool()
        return await self._cancel(pool, self._shared_publisher(pool), job_id)

    async def queue_status(self, job_id: str) -> QueueStatus | None:
        """A job ARQ knows but we hold no snapshot of (enqueued without `publish_pending`).

        None when ARQ does not know it either: only then does the status endpoint say 404.
        """
        pool = await self._shared_pool()
        job = Job(job_id, pool, _queue_name=self.queue_name)
        arq_status = await job.status()
        mapped = ARQ_STATUSES[arq_status]
        if mapped is not None:
            return QueueStatus(status=mapped)
        if arq_status is not ArqStatus.complete:
            return None
        info = await job.result_info()
        if info is None:
            return None
        if info.success:
            return QueueStatus(status=JobStatus.SUCCESS, result=_json_or_none(info.result))
        failure = info.result
        if isinstance(failure, BaseException):
            return QueueStatus(status=JobStatus.FAILURE, error=error_of(failure))
        error = error_info(type(failure).__name__, str(failure))
        return QueueStatus(status=JobStatus.FAILURE, error=error)

    async def settle_pending(self, *, older_than: float, batch: int = 100) -> list[str]:
        """End the jobs ARQ finished without ever running them; return their ids.

        ARQ fails some jobs before the job function (and so our wrapper) runs: a function
        the worker does not have, a job that expired in the queue, too many tries. No ARQ
        hook sees those, so without this their stream would stay `pending` for good. Jobs
        enqueued more than `older_than` seconds ago are looked at: one that started (or
        ended) is forgotten; one ARQ completed while our snapshot says `pending` gets
        ARQ's outcome, through the publish script (the first web process wins).
        """
        pool = await self._shared_pool()
        seconds, micros = await pool.time()
        due = await pool.zrangebyscore(
            self.pending_index,
            "-inf",
            seconds + micros / 1e6 - older_than,
            start=0,
            num=batch,
        )
        settled = []
        publisher = self._shared_publisher(pool)
        for raw in due:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if await self._settle(pool, publisher, job_id):
                settled.append(job_id)
        return settled

    async def run_settler(self, stop: asyncio.Event) -> None:
        """`settle_pending` every lease / 2 seconds, for jobs older than a lease, until
        `stop` (every web process with an ARQ runner runs one); errors are logged."""
        interval = self.settings.lease_seconds / 2
        while not stop.is_set():
            try:
                await self.settle_pending(older_than=self.settings.lease_seconds)
            except Exception:
                log.exception("settling pending ARQ jobs failed; trying again later")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def _settle(self, pool: ArqRedis, publisher: AsyncPublisher, job_id: str) -> bool:
        index = self.pending_index
        state = self.keyspace.job(job_id).state
        status = await publisher.redis.hget(state, "status")  # type: ignore[misc]
        if status != JobStatus.PENDING.value.encode():  # started, ended, or its state is gone
            await pool.zrem(index, job_id)
            return False
        outcome = await self.queue_status(job_id)
        if outcome is None:  # no trace left in ARQ (its result expired): nothing to tell
            log.warning("job %s: pending, and ARQ has no trace of it", job_id)
            await pool.zrem(index, job_id)
            return False
        if outcome.status is JobStatus.PENDING or outcome.status is JobStatus.STARTED:
            return False  # still queued, or running right now: look again later
        draft = EventDraft(
            job_id=job_id,
            status=outcome.status,
            result=outcome.result if outcome.status is JobStatus.SUCCESS else None,
            error=outcome.error,
        )
        published = await publisher.publish(draft)
        await pool.zrem(index, job_id)
        if published.accepted:
            log.warning("job %s: ARQ ended it without running it (%s)", job_id, outcome.error)
        return published.accepted

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        publisher, self._publisher = self._publisher, None
        if publisher is not None and publisher.redis is not pool:
            await publisher.redis.aclose()
        if pool is not None:
            await pool.aclose()
            await pool.connection_pool.disconnect()  # a pool passed in is not closed with it

    # --- the work, on a given connection pool ---

    async def _enqueue(
        self, pool: ArqRedis, publisher: AsyncPublisher, job_id: str, task: str,
        params: dict[str, Any], *, pending_published: bool = False,
    ) -> None:  # fmt: skip
        if not pending_published:
            outcome = await publisher.publish(EventDraft(job_id=job_id, status=JobStatus.PENDING))
            if not outcome.accepted:
                raise EnqueueRefused(f"job {job_id} already exists ({outcome.reason})")
        try:
            # Indexed before the job exists in ARQ's queue, so no worker can finish it unseen.
            seconds, micros = await pool.time()
            await pool.zadd(self.pending_index, {job_id: seconds + micros / 1e6})
            job = await pool.enqueue_job(
                task, _job_id=job_id, _queue_name=self.queue_name, **params
            )
            if job is None:
                raise EnqueueRefused(f"ARQ already has a job {job_id}")
        except Exception as exc:
            # The job will never run: end its stream rather than leave it pending forever.
            error = error_of(exc)
            await _quietly(
                publisher.publish(EventDraft(job_id=job_id, status=JobStatus.FAILURE, error=error))
            )
            raise

    async def _enqueue_group(
        self,
        pool: ArqRedis,
        publisher: AsyncPublisher,
        parent_id: str,
        children: list[ChildJob],
        fail_fast: bool,
    ) -> None:
        plan = FamilyPlan(
            parent_id=parent_id,
            kind=FamilyKind.GROUP,
            children=tuple(ChildPlan(job_id=c.job_id, name=c.task) for c in children),
            fail_fast=fail_fast,
            runner="arq",
        )
        await arecord_family(publisher, plan)
        for index, child in enumerate(children):  # their `pending` is recorded with the family
            try:
                await self._enqueue(pool, publisher, child.job_id, child.task, child.params,
                                    pending_published=True)  # fmt: skip
            except Exception as exc:  # this one failed (and says so): so do those not sent
                error = error_of(exc)
                for unsent in children[index + 1 :]:
                    draft = EventDraft(job_id=unsent.job_id, status=JobStatus.FAILURE, error=error)
                    await _quietly(publisher.publish(draft))
                raise

    async def _cancel(
        self, pool: ArqRedis, publisher: AsyncPublisher, job_id: str
    ) -> PublishOutcome:
        if await publisher.redis.exists(self.keyspace.family(job_id)):  # a parent: one by one
            publisher.families.revoke_tasks = lambda ids: self._abort_all(pool, ids)
            return await publisher.families.cancel(job_id)
        outcome = await publisher.publish(EventDraft(job_id=job_id, status=JobStatus.REVOKED))
        if outcome.accepted:
            await self._abort(pool, job_id)
        return outcome

    async def _abort_all(self, pool: ArqRedis, job_ids: list[str]) -> None:
        await abort_jobs(pool, self.queue_name, job_ids)

    async def _abort(self, pool: ArqRedis, job_id: str) -> None:
        await abort_jobs(pool, self.queue_name, [job_id])

    async def _shared_pool(self) -> ArqRedis:
        if self._pool is None:
            pool = queue_pool(
                self.settings.arq_url, max_connections=SHARED_POOL_SIZE, timeout=SHARED_POOL_TIMEOUT
            )
            self._pool = ArqRedis(pool, default_queue_name=self.queue_name)
        return self._pool

    def _shared_publisher(self, pool: ArqRedis) -> AsyncPublisher:
        if self._publisher is None:
            client = pool if self._one_redis else self._progress_client(SHARED_POOL_SIZE)
            self._publisher = AsyncPublisher(client, self.settings)
        return self._publisher

    def _progress_client(self, size: int) -> AsyncRedis:
        return async_client(self.settings, max_connections=size, socket_timeout=SHARED_POOL_TIMEOUT)

    async def _connect(self) -> ArqRedis:
        # No connection retries: a request should fail fast (ARQ's default waits 5 s).
        redis_settings = dataclasses.replace(
            RedisSettings.from_dsn(self.settings.arq_url), conn_retries=0
        )
        return await create_pool(redis_settings, default_queue_name=self.queue_name)

    def _run_once(self, work: Callable[[ArqRedis, AsyncPublisher], Awaitable[R]]) -> R:
        async def main() -> R:
            pool = await self._connect()
            progress = pool if self._one_redis else self._progress_client(2)
            try:
                return await work(pool, AsyncPublisher(progress, self.settings))
            finally:
                await pool.aclose()
                if progress is not pool:
                    await progress.aclose()

        return asyncio.run(main())


async def _quietly(step: Awaitable[Any]) -> None:
    try:
        await step
    except Exception as exc:
        log.warning("could not publish the failure of an enqueue: %s", exc)
