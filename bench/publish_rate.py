"""Aggregate publish throughput: publisher processes publishing flat out into one Redis or
into the primaries of a cluster, and what that cost each Redis.

Each publisher is a process of its own (spawned, allowed on every core), sending the
project's publish script in pipelined batches (`bench.drivers.OursDriver`, as the
fan-out steps publish) to random jobs of its own, started first.
The window is the same wall-clock interval for all of them. Per Redis the
harness reads, over the window, its process CPU (/proc) and the script's own time
(`INFO commandstats`), so besides the measured calls/s it can project the capacity each
Redis would have on a core of its own: calls per second of Redis CPU. On a machine with
fewer cores than Redis processes plus publishers, the measured rate shows the machine's
limit, the projection Redis's.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import redis
import uvloop

from bench.drivers import OursDriver
from bench.machine import cpu_seconds
from bench.publish_cost import evalsha


@dataclass(frozen=True, slots=True)
class Target:
    """Where to publish: the `REDIS_URL` (one server or `redis+cluster://`), the queue's
    non-cluster URL a cluster needs, and each Redis process (pid, plain URL)."""

    name: str
    redis_url: str
    queue_url: str | None
    pids: tuple[int, ...]
    node_urls: tuple[str, ...]


def publish_flat_out(
    target: Target, start_at: float, seconds: float, jobs: int, batch: int
) -> tuple[int, float, bool]:
    """In a publisher process: publish from `start_at` (UNIX time) for `seconds`.
    Returns (calls answered, this process's CPU seconds, whether it started late)."""
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return uvloop.run(_flat_out(target, start_at, seconds, jobs, batch))


async def _flat_out(
    target: Target, start_at: float, seconds: float, jobs: int, batch: int
) -> tuple[int, float, bool]:
    driver = OursDriver(target.redis_url, f"r{uuid.uuid4().hex[:8]}", target.queue_url)
    try:
        names = [uuid.uuid4().hex for _ in range(jobs)]
        for job in names:
            await driver.create(job)
        late = time.time() > start_at
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu, calls = time.process_time(), 0
        while time.time() < start_at + seconds:
            calls += len(await driver.publish_many(random.choices(names, k=batch)))
        return calls, time.process_time() - cpu, late
    finally:
        await driver.close()


def redis_readings(target: Target, clients: list[redis.Redis]) -> list[tuple[int, float, float]]:
    """Per Redis process: (EVALSHA calls, their µs, process CPU seconds) so far."""
    return [
        (*evalsha(client), cpu_seconds([pid]))
        for client, pid in zip(clients, target.pids, strict=True)
    ]


def set_affinity(pids: tuple[int, ...], cores: set[int]) -> None:
    for pid in pids:
        os.sched_setaffinity(pid, cores)


class PublishRate:
    """`processes` publisher processes, kept across measurements (spawned once)."""

    def __init__(self, processes: int, *, jobs: int = 500, batch: int = 50) -> None:
        self.processes, self.jobs, self.batch = processes, jobs, batch
        self.pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"))
        self.warm = False

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)

    def measure(self, target: Target, seconds: float) -> dict[str, object]:
        """Every publisher flat out into `target` for `seconds`; Redis may use every core
        meanwhile (then back on the cores it had)."""
        clients = [redis.Redis.from_url(url) for url in target.node_urls]
        kept = os.sched_getaffinity(target.pids[0])
        set_affinity(target.pids, set(range(os.cpu_count() or 1)))
        try:
            start_at = time.time() + (2.0 if self.warm else 5.0)  # spawn, start the jobs
            futures = [
                self.pool.submit(publish_flat_out, target, start_at, seconds, self.jobs, self.batch)
                for _ in range(self.processes)
            ]
            time.sleep(max(0.0, start_at - time.time() - 0.2))
            before = redis_readings(target, clients)
            results = [f.result(timeout=seconds + 60) for f in futures]
            after = redis_readings(target, clients)
            self.warm = True
        finally:
            set_affinity(target.pids, kept)
            for client in clients:
                client.close()
        deltas = [
            tuple(b - a for a, b in zip(x, y, strict=True))
            for x, y in zip(before, after, strict=True)
        ]
        return {
            "calls_per_s": sum(r[0] for r in results) / seconds,
            "publisher_cpu_pct": 100 * sum(r[1] for r in results) / seconds,
            "late_publishers": sum(r[2] for r in results),
            "per_redis": [{"calls": c, "script_usec": u, "cpu_s": s} for c, u, s in deltas],
        }
