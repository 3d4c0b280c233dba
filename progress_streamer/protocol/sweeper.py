"""The lease sweeper: ends jobs whose worker died with a `failure` of type `WorkerLost`.

Every web process runs one (`LeaseSweeper.run` in the app's lifespan). It reads the
sorted set of running jobs by lease deadline (`KeySpace.leases`, kept by the workers'
heartbeats) and publishes through the publish script with `condition='lease_expired'`,
so a lease extended meanwhile wins, and of several sweepers the first one wins. Each
pass also checks the parent jobs that are due (`family_sweeper.py`).
"""

from __future__ import annotations

import asyncio
import logging

import redis

from progress_streamer.protocol.connections import AsyncRedis
from progress_streamer.protocol.event import ErrorInfo, EventDraft
from progress_streamer.protocol.family_sweeper import FamilySweeper
from progress_streamer.protocol.history import is_wrong_type
from progress_streamer.protocol.keys import KeySpace, is_valid_job_id
from progress_streamer.protocol.publisher import AsyncPublisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus

log = logging.getLogger(__name__)

WORKER_LOST = ErrorInfo(type="WorkerLost", message="the worker running this job stopped responding")


class LeaseSweeper:
    """Finds expired leases and fails their jobs; `run` loops every lease / 4 seconds."""

    def __init__(self, client: AsyncRedis, settings: Settings, *, batch: int = 100) -> None:
        self.redis = client
        self.settings = settings
        self.keyspace = KeySpace(settings.key_prefix)
        self.publisher = AsyncPublisher(client, settings)
        self.families = FamilySweeper(self.publisher)  # parent jobs (protocol/family.py)
        self.batch = batch
        self.interval = settings.lease_seconds / 4

    async def sweep_once(self) -> list[str]:
        """Fail every job whose lease has expired; return the ids this call failed."""
        seconds, micros = await self.redis.time()
        now = seconds + micros / 1_000_000
        due = await self.redis.zrangebyscore(
            self.keyspace.leases, "-inf", now, start=0, num=self.batch
        )
        swept = []
        for raw in due:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if await self._sweep(job_id):
                swept.append(job_id)
        await self.families.sweep_once()
        return swept

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep until `stop` is set; Redis errors are logged and retried with back-off."""
        delay = self.interval
        while not stop.is_set():
            try:
                await self.sweep_once()
                delay = self.interval
            except (redis.RedisError, OSError) as exc:
                delay = min(delay * 2, self.settings.lease_seconds)
                log.warning("lease sweep failed (%s); next try in %.1fs", exc, delay)
            except Exception:
                delay = min(delay * 2, self.settings.lease_seconds)
                log.exception("lease sweep failed; next try in %.1fs", delay)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
        self.publisher.families.close()  # held parent progress: the next sweeper flushes it

    async def _sweep(self, job_id: str) -> bool:
        if not is_valid_job_id(job_id):
            await self.redis.zrem(self.keyspace.leases, job_id)
            return False
        draft = EventDraft(job_id=job_id, status=JobStatus.FAILURE, error=WORKER_LOST)
        try:
            outcome = await self.publisher.publish(draft, condition="lease_expired")
        except redis.ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            # Not state this service wrote: it can never be swept; it must not block the rest.
            log.warning("job %s: its state key has the wrong type; not sweeping it", job_id)
            await self.redis.zrem(self.keyspace.leases, job_id)
            return False
        if outcome.accepted:
            log.warning("job %s: its worker stopped responding; failed it (WorkerLost)", job_id)
        elif outcome.reason == "lease_active":
            # A heartbeat extended the lease after we read the index, or the job is gone.
            await self._resync(job_id)
            return False
        await self.redis.zrem(self.keyspace.leases, job_id)
        return outcome.accepted

    async def _resync(self, job_id: str) -> None:
        """Index the job by its real lease, or forget it when it has none (gone, expired)."""
        lease = await self.redis.hget(self.keyspace.job(job_id).state, "lease")  # type: ignore[misc]
        if lease is None:
            await self.redis.zrem(self.keyspace.leases, job_id)
        else:
            await self.redis.zadd(self.keyspace.leases, {job_id: float(lease)})
