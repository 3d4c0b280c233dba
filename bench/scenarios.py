"""The scenarios: idle capacity, fan-out throughput and latency, for one server at a time.

Each returns plain dicts (one per size or rate) that `bench.report` turns into tables.
A step publishes at a set rate, waits (bounded) until every expected delivery arrived,
then reads the latencies, and the CPU time every process spent over that window: the
server's (its core), and on the load core the load generator's, the harness's (which
is the publisher) and Redis's, so a saturated load core shows up in the figures.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from bench.drivers import Driver, NaiveDriver, NchanDriver, OursDriver, Published, drive
from bench.fleet import Fleet, Received
from bench.machine import cpu_seconds
from bench.servers import Backend, RunningServer

DRAIN_SECONDS = 3.0  # how long a step waits for late deliveries before counting them lost
TIMED_EVERY = 10  # one stream in ten records latencies (see bench/loadgen.py)
PUBLISHED_SHARE = 0.9  # a step that published less than this share of its rate is short
LATE_MS = 5.0  # a delivery later than this counts as late (the share is reported)
# The publish script's calls as Redis counts them (`INFO commandstats`: calls, and the
# wall time spent in them, its CPU when the core is free): part of what a publish costs,
# which for Nchan is inside its server's CPU.
SCRIPT_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """Every size of a run; `QUICK` is the smoke test's, `FULL` the issue's."""

    idle_streams: tuple[int, ...]
    idle_jobs: int
    idle_hold: float  # seconds each size is held; every job gets one event in that time
    fanout_clients: int
    fanout_jobs: int
    fanout_rates: tuple[int, ...]  # published events/s, over all jobs
    step_seconds: float
    latency_rate: int  # published events/s of the latency scenario
    latency_seconds: float
    held_streams: int  # idle streams held while live deliveries are timed (bench/held.py)
    held_jobs: int  # the idle jobs they watch (no event during the step)
    live_clients: int  # live streams, every one timed
    live_jobs: int
    live_rate: int  # published events/s over the live jobs
    held_seconds: float  # each step's length (several keep-alive ping rounds)


FULL = Sizes(
    idle_streams=(1_000, 5_000, 10_000),
    idle_jobs=1_000,
    idle_hold=3.0,
    fanout_clients=1_000,
    fanout_jobs=100,
    # Up to 120,000 deliveries/s: past both servers' knees (the steps stop after two
    # steps far behind).
    fanout_rates=(100, 500, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 10_000, 12_000),
    step_seconds=4.0,
    latency_rate=200,
    latency_seconds=6.0,
    held_streams=10_000,
    held_jobs=1_000,
    live_clients=200,
    live_jobs=20,
    live_rate=200,  # x 10 clients per job: 2,000 deliveries/s
    held_seconds=15.0,
)
QUICK = Sizes(
    idle_streams=(20, 50),
    idle_jobs=10,
    idle_hold=0.5,
    fanout_clients=50,
    fanout_jobs=10,
    fanout_rates=(50, 200),
    step_seconds=0.5,
    latency_rate=20,
    latency_seconds=0.5,
    held_streams=50,
    held_jobs=10,
    live_clients=20,
    live_jobs=2,
    live_rate=20,
    held_seconds=1.0,
)


@dataclass(frozen=True, slots=True)
class Context:
    """What a scenario works with: the server, its publisher, the clients and Redis."""

    server: RunningServer
    driver: Driver
    fleet: Fleet
    backend: Backend
    monitor: redis.asyncio.Redis
    redis_pid: int
    # The other primaries of a Redis Cluster: a step counts every primary's script calls
    # and CPU (bench/cluster_fanout.py).
    other_monitors: tuple[redis.asyncio.Redis, ...] = ()
    other_redis_pids: tuple[int, ...] = ()


def make_driver(server: RunningServer, backend: Backend, key_prefix: str) -> Driver:
    if server.name in ("ours", "baseline"):
        return OursDriver(backend.redis_url, key_prefix)
    if server.name == "naive":
        return NaiveDriver(backend.redis_url, key_prefix)
    return NchanDriver(server.port)


def stream_path(job_id: str) -> str:
    return f"/api/v1/jobs/{job_id}/events"


def streams_for(jobs: list[str], first: int, end: int) -> tuple[list[str], list[bool]]:
    """Streams `first`..`end`-1, round-robin over the jobs, and which of them are timed:
    each job's timed streams sit at a different place in its subscription order."""
    paths, timed = [], []
    for i in range(first, end):
        place, job = divmod(i, len(jobs))
        paths.append(stream_path(jobs[job]))
        timed.append((place + job) % TIMED_EVERY == 0)
    return paths, timed


def expected_deliveries(published: Published, open_by_path: Counter[str]) -> int:
    return sum(n * open_by_path[stream_path(job)] for job, n in published.per_job.items())


class CpuMeter:
    """CPU seconds of the server and of the load core's processes over a window."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.start = time.monotonic()
        self.first = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        ctx = self.ctx
        return (
            ctx.server.cpu_seconds(),
            ctx.fleet.cpu_seconds(),
            cpu_seconds([os.getpid()]),
            cpu_seconds([ctx.redis_pid, *ctx.other_redis_pids]),
        )

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.start
        now = self._read()
        server, loadgen, harness, redis_cpu = (b - a for a, b in zip(self.first, now, strict=True))
        return {
            "wall_s": wall,
            "server_cpu_s": server,
            "server_cpu_pct": 100 * server / wall,
            "loadgen_cpu_pct": 100 * loadgen / wall,
            "publisher_cpu_pct": 100 * harness / wall,
            "redis_cpu_pct": 100 * redis_cpu / wall,
            "redis_cpu_s": redis_cpu,
        }


async def wait_for(fleet: Fleet, expected: int, within_s: float) -> Received:
    """Poll the clients until they got `expected` events or `within_s` seconds passed."""
    deadline = time.monotonic() + within_s
    got = await fleet.count()
    while got.received < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        got = await fleet.count()
    return got


def percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def step(
    ctx: Context, jobs: list[str], open_by_path: Counter[str], rate: float, seconds: float
) -> dict[str, Any]:
    """Publish at `rate` for `seconds`, wait for the deliveries, measure everything."""
    since = time.time()
    await ctx.fleet.reset(since)
    monitors = (ctx.monitor, *ctx.other_monitors)
    scripts_before = await script_stats(*monitors)
    meter = CpuMeter(ctx)
    published = await drive(ctx.driver, jobs, rate, seconds)
    expected = expected_deliveries(published, open_by_path)
    got = await wait_for(ctx.fleet, expected, DRAIN_SECONDS)
    cpu = meter.stop()
    scripts_after = await script_stats(*monitors)
    calls, usec = (b - a for a, b in zip(scripts_before, scripts_after, strict=True))
    result = await ctx.fleet.collect()
    # Deliveries/s over the time they took to arrive: from the first publish to the
    # last delivery (never shorter than the publishing itself).
    window = max(result.last - published.started, published.seconds)
    latencies = sorted(result.latencies)
    delivered = result.received
    return {
        "rate": rate,
        "published": published.total,
        "published_per_s": published.total / published.seconds,
        "refused": published.refused,
        "expected": expected,
        "delivered": delivered,
        "lost": max(0, expected - delivered),
        "delivered_per_s": delivered / window,
        "timed": result.timed,
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "max_ms": _ms(latencies[-1] if latencies else None),
        "late_pct": late_share(latencies, LATE_MS / 1000),
        "cpu_us_per_delivery": 1e6 * cpu["server_cpu_s"] / delivered if delivered else None,
        "script_calls": calls,
        "script_cpu_pct": 100 * usec / 1e6 / cpu["wall_s"],
        "script_us_per_call": usec / calls if calls else None,
        # Redis's own CPU (/proc) per publish: the script, the PUBLISH to the hub and the
        # network I/O of both; only the publishes keep ours' Redis busy during a step.
        "redis_cpu_us_per_publish": 1e6 * cpu["redis_cpu_s"] / calls if calls else None,
        # The server's CPU and Redis's, per delivery: what Nchan's server CPU alone covers
        # (it publishes inside nginx).
        "cpu_us_per_delivery_with_redis": 1e6
        * (cpu["server_cpu_s"] + cpu["redis_cpu_s"])
        / delivered
        if delivered
        else None,
        "streams_open": got.open,
        **cpu,
    }


def late_share(ordered: list[float], bound: float) -> float | None:
    """% of the (sorted) latencies above `bound`."""
    if not ordered:
        return None
    return 100 * (len(ordered) - bisect.bisect_right(ordered, bound)) / len(ordered)


async def script_stats(*monitors: redis.asyncio.Redis) -> tuple[int, int]:
    """(calls, CPU µs) of scripts so far, as Redis counts them (`INFO commandstats`),
    summed over the servers (a cluster's primaries)."""
    found = []
    for monitor in monitors:
        stats = await monitor.info("commandstats")
        found += [stats[name] for name in SCRIPT_COMMANDS if name in stats]
    return sum(int(s["calls"]) for s in found), sum(int(s["usec"]) for s in found)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


async def redis_clients(ctx: Context) -> tuple[int, int]:
    """(connections the server holds to Redis, pub/sub connections Redis sees)."""
    held = await asyncio.to_thread(ctx.server.redis_connections, ctx.backend.redis_port)
    pubsub = len(await ctx.monitor.client_list(_type="pubsub"))
    return held, pubsub


async def idle_capacity(ctx: Context, sizes: Sizes, prefix: str) -> list[dict[str, Any]]:
    """Hold more and more streams; per size: established, RSS per stream, Redis clients."""
    jobs = [f"{prefix}-idle-{i}" for i in range(sizes.idle_jobs)]
    for job in jobs:
        await ctx.driver.create(job)
    await asyncio.sleep(0.5)
    baseline = ctx.server.rss_bytes()
    rows: list[dict[str, Any]] = []
    held = 0
    failed: Counter[str] = Counter()
    for target in sizes.idle_streams:
        paths, timed = streams_for(jobs, held, target)
        opened = await ctx.fleet.connect(ctx.server.port, paths, timed)
        held += opened.established
        failed.update(opened.failed)
        await asyncio.sleep(0.5)
        hold = await step(
            ctx, jobs, opened.open_by_path, len(jobs) / sizes.idle_hold, sizes.idle_hold
        )
        rss = ctx.server.rss_bytes()
        redis_held, pubsub = await redis_clients(ctx)
        rows.append(
            {
                "streams": target,
                "established": hold["streams_open"],
                "failed": dict(failed),
                "connect_s": opened.seconds,
                "rss_bytes": rss,
                "baseline_rss_bytes": baseline,
                "rss_per_stream": (rss - baseline) / held if held else None,
                "redis_connections": redis_held,
                "redis_pubsub": pubsub,
                "hold_expected": hold["expected"],
                "hold_delivered": hold["delivered"],
                "hold_p99_ms": hold["p99_ms"],
                "server_alive": ctx.server.alive(),
            }
        )
        if not ctx.server.alive():
            break
    return rows


async def fanout(ctx: Context, sizes: Sizes, prefix: str) -> dict[str, Any]:
    """The latency step, then the rate steps, over the same connected clients."""
    jobs = [f"{prefix}-fan-{i}" for i in range(sizes.fanout_jobs)]
    for job in jobs:
        await ctx.driver.create(job)
    paths, timed = streams_for(jobs, 0, sizes.fanout_clients)
    opened = await ctx.fleet.connect(ctx.server.port, paths, timed)
    await asyncio.sleep(0.5)
    latency = await step(ctx, jobs, opened.open_by_path, sizes.latency_rate, sizes.latency_seconds)
    steps = []
    overloaded = 0
    for rate in sizes.fanout_rates:
        result = await step(ctx, jobs, opened.open_by_path, rate, sizes.step_seconds)
        steps.append(result)
        behind = result["lost"] > 0.05 * result["expected"] or (result["p99_ms"] or 0) > 1000
        # The publisher short of the rate asked: the load side, not the server, is the
        # limit there, and a higher rate would measure nothing more.
        short = result["published_per_s"] < PUBLISHED_SHARE * rate
        overloaded = overloaded + 1 if behind or short else 0
        if overloaded >= 2 or not ctx.server.alive():
            break  # far behind twice in a row: higher rates only pile up a backlog
    return {
        "clients": sizes.fanout_clients,
        "established": opened.established,
        "failed": dict(opened.failed),
        "latency": latency,
        "steps": steps,
    }
