"""Catching clients up from a job's history: after a (re)subscribe, and whenever a live
event does not follow a client's last one (a gap in seq, another incarnation).

The hub (`streaming/hub.py`) holds the clients and hands them here; one history read per
job and distinct last seq, not per client, in a task that never raises and leaves no
client held: each is released with its replay, or with its own `StateLost` when the
state it saw is gone (a restart, a failover's replica that missed the last writes), and
the loss is reported to Redis so every viewer agrees (protocol/incarnation.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable

from redis.exceptions import RedisError

from progress_streamer.protocol.event import decode_event, encode_event
from progress_streamer.protocol.history import CatchUp, CorruptState, JobReader
from progress_streamer.protocol.incarnation import SeenState, state_lost_draft
from progress_streamer.protocol.keys import JobKeys, KeySpace
from progress_streamer.protocol.publisher import AsyncPublisher
from progress_streamer.web.metrics import Metrics
from progress_streamer.web.streaming.shards import PASSING_ERRORS
from progress_streamer.web.streaming.subscriber import Delivery, Subscriber, frame_of

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # a cluster primary that just came back may refuse a read this long
RETRY_PAUSE_MAX = 0.5


class CatchUps:
    """The hub's catch-up reads under way, and how their results reach the clients."""

    def __init__(
        self,
        keyspace: KeySpace,
        reader: JobReader,
        publisher: AsyncPublisher,
        metrics: Metrics,
        *,
        cluster: bool,
    ) -> None:
        self.keyspace = keyspace
        self.reader = reader
        self.publisher = publisher  # reports lost states (the loss wins)
        self.metrics = metrics
        self.cluster = cluster
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def cancel(self) -> None:
        """Stop the reads under way (the process is shutting down)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def recheck(self, job_id: str, subs: list[Subscriber]) -> None:
        """These clients were offered an event that does not follow their last one (or a
        replay of another incarnation): hold the job for them and let its history decide."""
        self.metrics.rechecks.inc()
        # A client held already is released by its holder, whose release then asks again.
        self.read_for(job_id, [sub for sub in subs if sub.hold(job_id)])

    def read_for(self, job_id: str, subs: Iterable[Subscriber]) -> None:
        """One history read per distinct last seq, each in a task that never raises."""
        by_seq: defaultdict[int, list[Subscriber]] = defaultdict(list)
        for sub in subs:
            by_seq[sub.last_seq[job_id]].append(sub)
        for after, group in by_seq.items():
            task = asyncio.create_task(self._catch_up_from(job_id, after, group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _catch_up_from(self, job_id: str, after: int, subs: list[Subscriber]) -> None:
        """A catch-up task: never raises, and leaves no client held (released or closed)."""
        try:
            await self._read_and_deliver(job_id, after, subs)
        except (RedisError, OSError) as exc:
            log.warning("catch-up of job %s failed (%s); clients resume", job_id, exc)
            for sub in subs:
                sub.close("redis")
        except Exception:
            log.exception("catch-up of job %s failed; clients resume", job_id)
            for sub in subs:
                sub.close("error")

    async def _read_and_deliver(self, job_id: str, after: int, subs: list[Subscriber]) -> None:
        keys = self.keyspace.job(job_id)
        try:
            catch_up = await self._events_since(keys, after if after > 0 else None)
        except CorruptState as exc:
            log.warning("job %s: %s %s; its streams end StateLost", job_id, exc, exc.detail)
            for sub in subs:
                _lose(sub, job_id)
            return
        lost = [seen for sub in subs if (seen := self._deliver(sub, job_id, catch_up))]
        if lost:
            await self._report_lost(job_id, lost)

    async def _events_since(self, keys: JobKeys, after: int | None) -> CatchUp | None:
        """The history read of a catch-up. In cluster mode a primary that just came back
        (or took over) may refuse for a moment (its cluster state not yet ok, the command
        client's old connection to it closed): tried again for `RETRY_SECONDS`."""
        if not self.cluster:
            return await self.reader.events_since(keys, after)
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + RETRY_SECONDS, 0.05
        while True:
            try:
                return await self.reader.events_since(keys, after)
            except PASSING_ERRORS:
                if loop.time() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(2 * pause, RETRY_PAUSE_MAX)

    def _deliver(self, sub: Subscriber, job_id: str, catch_up: CatchUp | None) -> SeenState | None:
        """Release the client with what the history says; if the state it saw is gone,
        with `StateLost`, and return what it saw of that state (to report)."""
        known = sub.epoch[job_id]
        if job_id in sub.finished:
            sub.release(job_id, (), None)
            return None
        if catch_up is None or (known is not None and catch_up.epoch != known):
            seen = None if known is None else SeenState(epoch=known, seq=sub.last_seq[job_id])
            _lose(sub, job_id)
            return seen
        if catch_up.seq < sub.last_seq[job_id]:
            # The job's seq went back: a failover's replica missed the last writes, or
            # Redis restarted from an older file. The events this client saw are gone
            # and the next ones reuse their seqs: its stream of the job ends here.
            _lose(sub, job_id)
            return None
        replay = [frame_of(event) for event in catch_up.events]
        if not sub.release(job_id, replay, catch_up.epoch):
            self.recheck(job_id, [sub])
        return None

    async def _report_lost(self, job_id: str, lost: list[SeenState]) -> None:
        """Tell Redis what these clients saw of the lost state: the loss wins for all."""
        seen: dict[int, int] = {}
        for state in lost:
            seen[state.epoch] = max(seen.get(state.epoch, 0), state.seq)
        for epoch, seq in seen.items():
            try:
                await self.publisher.report_lost(job_id, SeenState(epoch=epoch, seq=seq))
            except (RedisError, OSError) as exc:
                log.warning("job %s: its lost state could not be reported: %s", job_id, exc)


def _lose(sub: Subscriber, job_id: str) -> None:
    """End the client's stream of this job with its own `StateLost` (not stored)."""
    last, epoch = sub.last_seq[job_id], sub.epoch[job_id] or 0
    sub.release(job_id, [state_lost(job_id, last, sub.last_attempt[job_id], epoch)], None)


def state_lost(job_id: str, last_seq: int, attempt: int, epoch: int) -> Delivery:
    """The `StateLost` failure for one client: seq one past the last it saw, not stored,
    of the epoch it saw (the end of its history, not the start of another)."""
    draft = state_lost_draft(job_id, attempt, round(time.time(), 6))
    return frame_of(decode_event(encode_event(draft, last_seq + 1, attempt, epoch)))
