"""Worker-side cost: a throttled progress call, a real publish, a million-report task.

    .venv/bin/python -m bench.worker_cost [--calls N] [--publishes N]

Starts its own redis-server (like the tests), so it measures a real round trip on
loopback. Prints a Markdown table; `bench.run` puts it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis

from workers.event import EventDraft
from workers.publisher import Publisher
from workers.redis_server import RedisServer
from workers.settings import Settings
from workers.status import Status
from workers.throttle import ProgressThrottle, Report


def busy_work(size: int) -> int:
    """A stand-in for a task's own work per item."""
    return sum(range(size))


def time_task(calls: int, size: int, throttle: ProgressThrottle | None) -> float:
    start = time.perf_counter()
    for i in range(calls):
        busy_work(size)
        if throttle is not None:
            throttle.report(step="working", percent=i * 100 / calls, current=i, total=calls)
    return time.perf_counter() - start


def measure(calls: int, publishes: int) -> dict[str, float]:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        settings = Settings(redis_url=server.url, key_prefix=f"b{uuid.uuid4().hex[:8]}")
        publisher = Publisher(client, settings)
        job = uuid.uuid4().hex
        publisher.publish(EventDraft(job_id=job, status=Status.STARTED))

        def send(report: Report) -> None:
            publisher.publish(
                EventDraft(
                    job_id=job,
                    status=Status.PROGRESS,
                    step=report.step,
                    percent=report.percent,
                    current=report.current,
                    total=report.total,
                    message=report.message,
                )
            )

        samples = []
        for _ in range(publishes):
            t = time.perf_counter()
            publisher.publish(EventDraft(job_id=job, status=Status.PROGRESS, step="x"))
            samples.append(time.perf_counter() - t)

        throttle = ProgressThrottle(send, interval_ms=settings.throttle_ms)
        throttle.report(step="working", percent=0)
        start = time.perf_counter()
        for i in range(calls):
            throttle.report(step="working", percent=50.0, current=i, total=calls)
        per_call = (time.perf_counter() - start) / calls
        throttle.flush()

        tasks = {}
        for label, size in (("light", 20), ("heavy", 400)):
            # Alternated, best of three each: a noisy neighbour then slows both alike.
            throttle = ProgressThrottle(send, interval_ms=settings.throttle_ms)
            bare, with_progress = [], []
            for _ in range(3):
                bare.append(time_task(calls, size, None))
                with_progress.append(time_task(calls, size, throttle))
            throttle.flush()
            tasks[label] = (min(bare), min(with_progress))
        client.close()
    return {
        "throttled_us": per_call * 1e6,
        "publish_p50_us": statistics.median(samples) * 1e6,
        "publish_p99_us": sorted(samples)[int(len(samples) * 0.99)] * 1e6,
        "calls": calls,
        **{f"{label}_bare_s": bare for label, (bare, _) in tasks.items()},
        **{f"{label}_progress_s": prog for label, (_, prog) in tasks.items()},
    }


def table(result: dict[str, float]) -> str:
    return "\n".join(
        [
            "| measure | value |",
            "| --- | --- |",
            f"| throttled `report()` call (coalesced) | {result['throttled_us']:.2f} µs |",
            f"| real publish, one round trip (p50) | {result['publish_p50_us']:.0f} µs |",
            f"| real publish (p99) | {result['publish_p99_us']:.0f} µs |",
            *(_task_row(result, label) for label in ("light", "heavy")),
        ]
    )


def _task_row(result: dict[str, float], label: str) -> str:
    calls, bare, prog = result["calls"], result[f"{label}_bare_s"], result[f"{label}_progress_s"]
    per_item = bare / calls * 1e6
    return (
        f"| task of {calls:,.0f} items at {per_item:.1f} µs of work each, reporting on "
        f"every item | {bare:.2f} s → {prog:.2f} s (+{(prog / bare - 1) * 100:.0f} %) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--publishes", type=int, default=5_000)
    args = parser.parse_args()
    print(table(measure(args.calls, args.publishes)))


if __name__ == "__main__":
    main()
