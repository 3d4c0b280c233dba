"""Scale-out figures: 1 vs 2 web processes behind nginx, and what a stream and a job cost.

    .venv/bin/python -m bench.scaleout            # `make bench` runs it after bench.run
    .venv/bin/python -m bench.scaleout --quick    # tiny sizes: checks the harness

Three scenarios, each on a fresh set of processes (`bench.proxied`: web processes behind
nginx with `deploy/nginx.conf`), on a private Redis:
- proxied fan-out: the fan-out steps of `bench.scenarios` (1,000 clients over 100 jobs)
  through nginx to 1 web process, to 2 with `least_conn`, and to 2 with the per-job
  affinity; per step also each part's CPU, the job channels each process subscribes
  to, the events Redis sent to the web processes, and bytes written per delivery;
- stream footprint: 9,000 idle streams held through nginx on one web process: RSS per
  stream of the web process and of nginx, and the kernel's buffers per socket (`ss -m`)
  and object sizes per socket (/proc/slabinfo);
- job footprint: `MEMORY USAGE` of a job's state hash and history after as many events
  as the history keeps (default `PROGRESS_HISTORY`, and 100), and `used_memory` per job.
The last two live in `bench.footprint`, the tables in `bench.scaleout_report`; they go
into docs/benchmarks.md between this module's own markers (docs/scaling.md builds its
model on them).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import uvloop

from bench import document
from bench.drivers import OursDriver
from bench.fleet import Fleet
from bench.footprint import job_footprint, stream_footprint
from bench.machine import (
    LOAD_CORE,
    cpu_seconds,
    load_average,
    pin_to,
    raise_open_files_limit,
)
from bench.proxied import Proxied, start_proxied, written_bytes
from bench.scaleout_report import block
from bench.scenarios import Context, step, streams_for
from bench.servers import Backend
from progress_streamer.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench-scaleout:begin (written by `python -m bench.scaleout`; overwritten) -->"
END = "<!-- bench-scaleout:end -->"
CONFIGS = (("1 web process", 1, False), ("2, least_conn", 2, False), ("2, affinity", 2, True))


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    clients: int
    jobs: int
    rates: tuple[int, ...]  # published events/s over all jobs
    step_seconds: float
    latency_rate: int
    latency_seconds: float
    idle_streams: int
    idle_jobs: int
    memory_jobs: int
    histories: tuple[int, ...]


FULL = Sizes(
    clients=1_000,
    jobs=100,
    rates=(100, 500, 1_000, 1_500, 2_000, 2_500, 3_000, 4_000, 5_000),
    step_seconds=4.0,
    latency_rate=200,
    latency_seconds=6.0,
    # nginx takes two open files per proxied stream, and this machine's hard limit is 20,000
    # (nginx cannot raise it in this container): 9,000 streams fit, 10,000 do not.
    idle_streams=9_000,
    idle_jobs=1_000,
    memory_jobs=100,
    histories=(1000, 100),
)
QUICK = Sizes(
    clients=40,
    jobs=8,
    rates=(50, 200),
    step_seconds=0.5,
    latency_rate=20,
    latency_seconds=0.5,
    idle_streams=200,
    idle_jobs=20,
    memory_jobs=4,
    histories=(50,),
)


class PartMeter:
    """CPU and bytes written of each part over a window, and what the web processes
    counted (events relayed from Redis, job channels subscribed)."""

    def __init__(self, server: Proxied, fleet: Fleet, redis_pid: int, monitor: redis.Redis):
        self.server, self.fleet, self.redis_pid, self.monitor = server, fleet, redis_pid, monitor
        self.start = time.monotonic()
        self.first = self._read()

    def _read(self) -> dict[str, float]:
        server = self.server
        relayed = sum(m["progress_events_relayed_total"] for m in server.metrics())
        info: dict[str, Any] = self.monitor.info("stats")  # type: ignore[assignment]
        return {
            "web": cpu_seconds(server.web_pids()),
            "nginx": cpu_seconds(server.nginx_pids()),
            "loadgen": self.fleet.cpu_seconds(),
            "publisher": cpu_seconds([os.getpid()]),
            "redis": cpu_seconds([self.redis_pid]),
            "web_written": written_bytes(server.web_pids()),
            "nginx_written": written_bytes(server.nginx_pids()),
            "redis_out": float(info["total_net_output_bytes"]),
            "relayed": relayed,
        }

    def stop(self, delivered: int) -> dict[str, Any]:
        wall = time.monotonic() - self.start
        now = self._read()
        delta = {k: now[k] - self.first[k] for k in now}
        per = max(delivered, 1)
        return {
            **{f"{k}_cpu_pct": 100 * delta[k] / wall for k in ("web", "nginx", "loadgen")},
            "publisher_cpu_pct": 100 * delta["publisher"] / wall,
            "redis_cpu_pct": 100 * delta["redis"] / wall,
            "web_bytes_per_delivery": delta["web_written"] / per,
            "nginx_bytes_per_delivery": delta["nginx_written"] / per,
            "redis_deliveries": delta["relayed"],
            "redis_bytes_per_redis_delivery": delta["redis_out"] / max(delta["relayed"], 1),
            "watched_jobs": [m["progress_watched_jobs"] for m in self.server.metrics()],
        }


async def proxied_step(
    ctx: Context, jobs: list[str], open_by_path: Counter[str], rate: float, seconds: float
) -> dict[str, Any]:
    meter = await asyncio.to_thread(
        PartMeter, ctx.server, ctx.fleet, ctx.redis_pid, redis.Redis.from_url(ctx.backend.redis_url)
    )
    result = await step(ctx, jobs, open_by_path, rate, seconds)
    parts = await asyncio.to_thread(meter.stop, result["delivered"])
    meter.monitor.close()
    return {**result, **parts}


async def proxied_fanout(
    backend: Backend, fleet: Fleet, redis_pid: int, sizes: Sizes, processes: int, affinity: bool
) -> dict[str, Any]:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    backend = dataclasses.replace(backend, key_prefix=prefix)
    server = await asyncio.to_thread(
        start_proxied, backend, processes, affinity=affinity, connections=4 * sizes.clients + 512
    )
    driver = OursDriver(backend.redis_url, prefix)
    monitor = redis.asyncio.Redis.from_url(backend.redis_url)
    ctx = Context(server, driver, fleet, backend, monitor, redis_pid)  # type: ignore[arg-type]
    try:
        jobs = [f"{prefix}-fan-{i}" for i in range(sizes.jobs)]
        for job in jobs:
            await driver.create(job)
        paths, timed = streams_for(jobs, 0, sizes.clients)
        opened = await fleet.connect(server.port, paths, timed)
        await asyncio.sleep(0.5)
        streams = [int(m["progress_open_streams"]) for m in server.metrics()]
        latency = await proxied_step(
            ctx, jobs, opened.open_by_path, sizes.latency_rate, sizes.latency_seconds
        )
        steps, behind_twice = [], 0
        for rate in sizes.rates:
            result = await proxied_step(ctx, jobs, opened.open_by_path, rate, sizes.step_seconds)
            steps.append(result)
            behind = result["lost"] > 0.05 * result["expected"] or (result["p99_ms"] or 0) > 1000
            behind_twice = behind_twice + 1 if behind else 0
            if behind_twice >= 2 or not server.alive():
                break
        return {
            "established": opened.established,
            "streams_per_process": streams,
            "latency": latency,
            "steps": steps,
        }
    except Exception as exc:  # the other configurations still get measured
        return {"error": f"{type(exc).__name__}: {exc}"[:500], "log": server.log_tail(800)}
    finally:
        await fleet.close_streams()
        await driver.close()
        await monitor.aclose()
        await asyncio.to_thread(server.stop)


# -- the command -----------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    return document.parse_args(
        argv, "python -m bench.scaleout", __doc__ or "", "fanout,streams,jobs"
    )


async def run(
    sizes: Sizes, scenarios: list[str], backend: Backend, redis_pid: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    fleet = Fleet(1 + max(1, -(-max(sizes.idle_streams, sizes.clients) // 5_000)))
    await fleet.start()
    try:
        if "fanout" in scenarios:
            results["fanout"] = {}
            for name, processes, affinity in CONFIGS:
                started = time.monotonic()
                results["fanout"][name] = await proxied_fanout(
                    backend, fleet, redis_pid, sizes, processes, affinity
                )
                print(f"fanout {name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
        if "streams" in scenarios:
            results["streams"] = await stream_footprint(backend, fleet, redis_pid, sizes)
    finally:
        await fleet.close()
    if "jobs" in scenarios:
        results["jobs"] = await asyncio.to_thread(job_footprint, backend.redis_url, sizes)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    open_files = raise_open_files_limit()
    pin_to(LOAD_CORE)
    load, started = load_average(), time.time()
    with RedisServer() as redis_server:
        client = redis.Redis.from_url(redis_server.url)
        client.config_set("maxclients", open_files - 64)
        client.close()
        assert redis_server.process is not None
        backend = Backend(
            redis_url=redis_server.url,
            redis_port=redis_server.port,
            key_prefix="scale",
            open_files=open_files,
            nchan=None,
        )
        results = uvloop.run(run(sizes, scenarios, backend, redis_server.process.pid))
    command = " ".join(["python -m bench.scaleout", *argv]).strip()
    text = block(results, sizes, command, load, started)
    raw = json.dumps(results, indent=1, default=str)
    document.save(text, raw, args, name="scaleout", started=started, markers=(BEGIN, END))
    return 0


if __name__ == "__main__":
    sys.exit(main())
