"""The publisher side of the benchmark: one driver per server, and a paced publish loop.

- ours: the project's own publish path (`protocol.publisher`: `publish_call`, the publish
  script that assigns seq, stores history and snapshot and PUBLISHes), with `progress`
  events whose `ts` is set to `time.time()` when each is built;
- naive: a plain Redis PUBLISH of the same JSON on the same channel name;
- Nchan: an HTTP POST of the same JSON to its publisher location (keep-alive, raw
  asyncio streams).

`drive()` publishes `rate` events per second round-robin over the jobs. Events that are
due together go in one batch (a Redis pipeline, or pipelined HTTP requests): a publish
per round trip from Python costs 150-300 µs of the load core, which would make the
publisher, not the server, the limit. Bounded in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio

from progress_streamer.protocol.connections import async_client
from progress_streamer.protocol.event import EventDraft, join_event
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import AsyncPublisher, outcome_of, publish_call
from progress_streamer.protocol.scripts import publish_script
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus

MAX_BATCH = 500  # events sent in one pipeline / one write at most


class Driver(Protocol):
    async def create(self, job_id: str) -> None: ...
    async def publish_many(self, job_ids: list[str]) -> list[bool]: ...
    async def close(self) -> None: ...


def bench_event(job_id: str, seq: int) -> bytes:
    """The JSON our publish script would store for a `progress` event, stamped now."""
    draft = EventDraft(
        job_id=job_id, status=JobStatus.PROGRESS, step="bench", ts=round(time.time(), 6)
    )
    head, tail = draft.encode(1 << 20)
    return join_event(head, seq, 1, tail)


class OursDriver:
    """The project's publish path: `AsyncPublisher` for single events, and for a batch
    the same `publish_call` (keys and arguments, `ts` stamped) and the same publish
    script, queued in one pipeline so that the publisher never limits the rate."""

    def __init__(self, redis_url: str, key_prefix: str, queue_url: str | None = None) -> None:
        # On a Redis Cluster (`queue_url`: the non-cluster Redis the settings then need),
        # the pipeline sends each node its share of the batch.
        self.settings = Settings(
            redis_url=redis_url,
            key_prefix=key_prefix,
            celery_broker_url=queue_url,
            arq_redis_url=queue_url,
        )
        self.client = async_client(self.settings, max_connections=4)
        self.publisher = AsyncPublisher(self.client, self.settings)
        self.script = publish_script(self.settings.cluster)  # SPUBLISH on a cluster
        self.sha = hashlib.sha1(self.script.encode()).hexdigest()
        self.loaded = False

    async def create(self, job_id: str) -> None:
        if not self.loaded:  # on every primary of a cluster, whichever slots jobs get
            await self.client.script_load(self.script)
            self.loaded = True
        outcome = await self.publisher.publish(EventDraft(job_id=job_id, status=JobStatus.STARTED))
        if not outcome.accepted:
            raise RuntimeError(f"the publish script refused to start {job_id}: {outcome}")

    async def publish_many(self, job_ids: list[str]) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            draft = EventDraft(job_id=job_id, status=JobStatus.PROGRESS, step="bench")
            call = publish_call(self.publisher.keyspace.job(job_id), draft, self.settings)
            # EVALSHA of the script `create()` loaded; the Script object itself would add a
            # SCRIPT EXISTS round trip to every batch. As a raw command: redis-py's cluster
            # pipeline blocks its `evalsha` method, not the command (routed by its keys).
            pipe.execute_command("EVALSHA", self.sha, len(call.keys), *call.keys, *call.args)
        replies = await pipe.execute()
        return [outcome_of(reply).accepted for reply in replies]

    async def close(self) -> None:
        await self.client.aclose()


class NaiveDriver:
    """A plain PUBLISH on the job's channel, what a tutorial's worker does (pipelined)."""

    def __init__(self, redis_url: str, key_prefix: str) -> None:
        self.client = redis.asyncio.Redis.from_url(redis_url, max_connections=4)
        self.keyspace = KeySpace(key_prefix)
        self.seq: Counter[str] = Counter()

    async def create(self, job_id: str) -> None:
        await self.publish_many([job_id])

    async def publish_many(self, job_ids: list[str]) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            self.seq[job_id] += 1
            pipe.publish(self.keyspace.job(job_id).channel, bench_event(job_id, self.seq[job_id]))
        await pipe.execute()
        return [True] * len(job_ids)

    async def close(self) -> None:
        await self.client.aclose()


class NchanDriver:
    """POSTs to Nchan's publisher location, pipelined on one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.host, self.port = "127.0.0.1", port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.seq: Counter[str] = Counter()

    async def create(self, job_id: str) -> None:
        await self.publish_many([job_id])

    async def publish_many(self, job_ids: list[str]) -> list[bool]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        requests = []
        for job_id in job_ids:
            self.seq[job_id] += 1
            body = bench_event(job_id, self.seq[job_id])
            requests.append(
                b"POST /pub/%s HTTP/1.1\r\nHost: nchan\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (job_id.encode(), len(body), body)
            )
        self.writer.write(b"".join(requests))
        try:
            statuses = [await self._answer(self.reader) for _ in job_ids]
        except (OSError, asyncio.IncompleteReadError):
            self.writer.close()
            self.writer = None
            return [False] * len(job_ids)
        return [status in (200, 201, 202) for status in statuses]

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
                await reader.readexactly(size + 2)
            await reader.readuntil(b"\r\n")
        elif (at := lower.find(b"content-length:")) >= 0:
            await reader.readexactly(int(lower[at + 15 : lower.find(b"\r\n", at)]))
        return int(head[9:12])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass(slots=True)
class Published:
    """What `drive()` got through: events accepted, and when and how long it took."""

    refused: int = 0
    per_job: Counter[str] = field(default_factory=Counter)
    started: float = 0.0  # UNIX time of the first publish
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.per_job.values())


async def drive(driver: Driver, jobs: list[str], rate: float, seconds: float) -> Published:
    """Publish `rate` events/s round-robin over `jobs` for `seconds` (bounded: 3x + 10 s).

    Each pass sends every event that is due by now in one batch, so when a batch takes
    long the next one is bigger and the rate holds; `seconds` in the result tells.
    """
    loop = asyncio.get_running_loop()
    total = max(1, round(rate * seconds))
    result = Published(started=time.time())
    start = loop.time()
    deadline = start + seconds * 3 + 10
    sent = 0
    while sent < total and loop.time() < deadline:
        due = min(total, int((loop.time() - start) * rate) + 1, sent + MAX_BATCH)
        if due <= sent:
            # At least 1 ms: uvloop's timers count whole milliseconds, a shorter sleep
            # returns at once and the loop would spin.
            await asyncio.sleep(max(0.001, start + sent / rate - loop.time()))
            continue
        batch = [jobs[i % len(jobs)] for i in range(sent, due)]
        for job, accepted in zip(batch, await driver.publish_many(batch), strict=True):
            if accepted:
                result.per_job[job] += 1
            else:
                result.refused += 1
        sent = due
    result.seconds = loop.time() - start
    return result
