"""Worker-side cost: a progress call as tasks make it, a real publish, a million reports.

    .venv/bin/python -m bench.worker_cost [--calls N] [--publishes N]

Starts its own redis-server (like the tests), so it measures a real round trip on
loopback. Progress is measured through the path a task takes: `self.progress(...)` in a
`ProgressTask` run by Celery (eagerly, in this process, with the same signal handlers a
worker runs: `started` is published, the attempt and its throttle are set up), and
`await ctx["progress"](...)` of the ARQ integration. The bare throttle is shown too.

The million-report task interleaves chunks of its loop with and without the report and
compares the medians of the chunk times: the machines are noisy (two separate runs of the
same loop differ by up to 20 %), and interleaving makes both sides see the same noise.
Prints a Markdown table; `bench.run` puts it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import redis
import redis.asyncio

from progress_streamer.arq.run import JobRun
from progress_streamer.celery.runtime import runtime
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.publisher import AsyncPublisher, Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.protocol.throttle import ProgressThrottle
from progress_streamer.redis_server import RedisServer
from workers.celery_app import create_celery_app

CHUNKS = 20  # the million-report task runs as this many interleaved pairs of chunks
# busy_work sizes: about 0.3, 1, 3.5 and 8 µs of work per item here
SIZES = (("light", 20), ("medium", 60), ("heavy", 400), ("heavier", 700))


def busy_work(size: int) -> int:
    """A stand-in for a task's own work per item."""
    return sum(range(size))


def measure(calls: int, publishes: int) -> dict[str, float]:
    with RedisServer() as server:
        settings = Settings(redis_url=server.url, key_prefix=f"b{uuid.uuid4().hex[:8]}")
        client = redis.Redis.from_url(server.url)
        try:
            result = {
                **publish_cost(Publisher(client, settings), publishes),
                "throttle_only_us": throttle_cost(calls, settings.throttle_ms),
                **celery_costs(settings, calls),
                "arq_progress_us": asyncio.run(arq_cost(settings, calls)),
                "calls": calls,
            }
        finally:
            client.close()
            runtime.close()
    return result


def publish_cost(publisher: Publisher, publishes: int) -> dict[str, float]:
    job = uuid.uuid4().hex
    publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    samples = []
    for _ in range(publishes):
        start = time.perf_counter()
        publisher.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, step="x"))
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {
        "publish_p50_us": statistics.median(samples) * 1e6,
        "publish_p99_us": samples[int(len(samples) * 0.99)] * 1e6,
    }


def throttle_cost(calls: int, interval_ms: int) -> float:
    throttle = ProgressThrottle(lambda report: None, interval_ms=interval_ms)
    throttle.report(step="working", percent=0)
    start = time.perf_counter()
    for i in range(calls):
        throttle.report(step="working", percent=50.0, current=i, total=calls)
    per_call = (time.perf_counter() - start) / calls
    throttle.close()
    return per_call * 1e6


def celery_costs(settings: Settings, calls: int) -> dict[str, float]:
    """`self.progress` per call, and the million-report task, in eager Celery tasks."""
    runtime.configure(settings)
    app = create_celery_app(settings, set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(bind=True, name="bench.progress_calls")  # type: ignore[untyped-decorator]
    def progress_calls(self: Any, n: int) -> float:
        self.progress(step="working", percent=0)
        start = time.perf_counter()
        for i in range(n):
            self.progress(step="working", percent=50.0, current=i, total=n)
        return (time.perf_counter() - start) / n

    @app.task(bind=True, name="bench.million")  # type: ignore[untyped-decorator]
    def million(self: Any, n: int, size: int) -> tuple[float, float, float]:
        chunk = max(n // CHUNKS, 1)
        bare, with_progress, tracked = [], [], []
        for _ in range(CHUNKS):
            start = time.perf_counter()
            for _i in range(chunk):
                busy_work(size)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            for i in range(chunk):
                busy_work(size)
                self.progress(step="working", percent=i * 100 / chunk, current=i, total=chunk)
            with_progress.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _i in self.track(range(chunk), step="working"):
                busy_work(size)
            tracked.append(time.perf_counter() - start)
        # The whole task's time, as the chunks' medians say it.
        return tuple(statistics.median(times) * CHUNKS for times in (bare, with_progress, tracked))

    @app.task(bind=True, name="bench.track_per_item")  # type: ignore[untyped-decorator]
    def track_per_item(self: Any, n: int) -> float:
        """What `self.track` adds to an empty loop body, per item (medians of chunks)."""
        chunk = max(n // CHUNKS, 1)
        added = []
        for _ in range(CHUNKS):
            start = time.perf_counter()
            for _i in range(chunk):
                pass
            bare = time.perf_counter() - start
            start = time.perf_counter()
            for _i in self.track(range(chunk)):
                pass
            added.append((time.perf_counter() - start - bare) / chunk)
        return statistics.median(added)

    out = {"throttled_us": progress_calls.apply(args=(calls,)).get() * 1e6}
    out["track_ns"] = track_per_item.apply(args=(calls,)).get() * 1e9
    for label, size in SIZES:
        bare, with_progress, tracked = million.apply(args=(calls, size)).get()
        out[f"{label}_bare_s"], out[f"{label}_progress_s"] = bare, with_progress
        out[f"{label}_track_s"] = tracked
    return out


async def arq_cost(settings: Settings, calls: int) -> float:
    """`await ctx["progress"](...)` per call (the ARQ integration's `JobRun.progress`)."""
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        run = JobRun(AsyncPublisher(client, settings), uuid.uuid4().hex, 1)
        await run.start()
        await run.progress(step="working", percent=0)
        start = time.perf_counter()
        for i in range(calls):
            await run.progress(step="working", percent=50.0, current=i, total=calls)
        per_call = (time.perf_counter() - start) / calls
        await run.succeed(None)
        await run.stop()
    finally:
        await client.aclose()
    return per_call * 1e6


def table(result: dict[str, float]) -> str:
    return "\n".join(
        [
            "| measure | value |",
            "| --- | --- |",
            "| Celery `self.progress(...)` call, coalesced (what a task pays per report) "
            f"| {result['throttled_us']:.2f} µs |",
            "| ARQ `await ctx['progress'](...)` call, coalesced "
            f"| {result['arq_progress_us']:.2f} µs |",
            "| the throttle alone (`ProgressThrottle.report`) "
            f"| {result['throttle_only_us']:.2f} µs |",
            f"| real publish, one round trip (p50) | {result['publish_p50_us']:.0f} µs |",
            f"| real publish (p99) | {result['publish_p99_us']:.0f} µs |",
            "| `self.track(items)`: added per item of an empty loop "
            f"| {result['track_ns']:.0f} ns |",
            *(_task_row(result, label) for label, _ in SIZES),
        ]
    )


def _task_row(result: dict[str, float], label: str) -> str:
    calls, bare, prog = result["calls"], result[f"{label}_bare_s"], result[f"{label}_progress_s"]
    per_item = bare / calls * 1e6
    tracked = result[f"{label}_track_s"]
    return (
        f"| Celery task of {calls:,.0f} items at {per_item:.1f} µs of work each: "
        f"`self.progress` on every item; `self.track(items)` | {bare:.2f} s → {prog:.2f} s "
        f"(+{(prog / bare - 1) * 100:.0f} %); → {tracked:.2f} s "
        f"(+{(tracked / bare - 1) * 100:.0f} %) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--publishes", type=int, default=5_000)
    args = parser.parse_args()
    print(table(measure(args.calls, args.publishes)))


if __name__ == "__main__":
    main()
