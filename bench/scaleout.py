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
The tables go into docs/benchmarks.md between this module's own markers (docs/scaling.md
builds its model on them).
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
from bench.machine import (
    LOAD_CORE,
    cpu_seconds,
    load_average,
    machine_info,
    pin_to,
    raise_open_files_limit,
    rss_bytes,
)
from bench.proxied import Proxied, socket_memory, start_proxied, written_bytes
from bench.scenarios import Context, step, streams_for
from bench.servers import Backend
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import publish_call
from progress_streamer.protocol.scripts import PUBLISH
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench-scaleout:begin (written by `python -m bench.scaleout`; overwritten) -->"
END = "<!-- bench-scaleout:end -->"
SLAB_CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi")
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


def slab_object_bytes() -> dict[str, int]:
    """This kernel's object size of each slab cache a TCP socket takes one object from."""
    sizes = {}
    try:
        for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
            fields = line.split()
            if fields[0] in SLAB_CACHES:
                sizes[fields[0]] = int(fields[3])
    except OSError:
        pass
    return sizes


def buffer_limits() -> dict[str, list[str]]:
    """The kernel's TCP buffer sizes (min, default, max): what a socket with data queued
    (a slow client) may take, where an idle one takes none."""
    return {
        name: Path(f"/proc/sys/net/ipv4/{name}").read_text().split()
        for name in ("tcp_wmem", "tcp_rmem")
    }


async def stream_footprint(
    backend: Backend, fleet: Fleet, redis_pid: int, sizes: Sizes
) -> dict[str, Any]:
    """Idle streams through nginx on one web process: memory per stream of each part."""
    prefix = f"m{uuid.uuid4().hex[:8]}"
    backend = dataclasses.replace(backend, key_prefix=prefix)
    server = await asyncio.to_thread(
        start_proxied, backend, 1, affinity=False, connections=3 * sizes.idle_streams + 512
    )
    driver = OursDriver(backend.redis_url, prefix)
    monitor = redis.asyncio.Redis.from_url(backend.redis_url)
    ctx = Context(server, driver, fleet, backend, monitor, redis_pid)  # type: ignore[arg-type]
    web_port = server.webs[0].port
    try:
        jobs = [f"{prefix}-idle-{i}" for i in range(sizes.idle_jobs)]
        for job in jobs:
            await driver.create(job)
        await asyncio.sleep(0.5)
        web_before = server.webs[0].rss_bytes()
        nginx_before = _nginx_rss(server)
        paths, timed = streams_for(jobs, 0, sizes.idle_streams)
        opened = await fleet.connect(server.port, paths, timed)
        # Every job sends one event (every stream gets one), then all is quiet again.
        hold = await step(ctx, jobs, opened.open_by_path, len(jobs) / 2.0, 2.0)
        await asyncio.sleep(1.0)
        held = hold["streams_open"]
        web_sockets = socket_memory(f"sport = :{web_port}")
        upstream_sockets = socket_memory(f"dport = :{web_port}")
        client_sockets = socket_memory(f"sport = :{server.port}")
        return {
            "streams": held,
            "asked": sizes.idle_streams,
            "failed": dict(opened.failed),
            "nginx_log": server.nginx_log()[-600:] if opened.failed else "",
            "hold_delivered": hold["delivered"],
            "hold_expected": hold["expected"],
            "web_rss_per_stream": (server.webs[0].rss_bytes() - web_before) / max(held, 1),
            "nginx_rss_per_stream": (_nginx_rss(server) - nginx_before) / max(held, 1),
            "web_rss_bytes": server.webs[0].rss_bytes(),
            "socket_buffers": {
                "web (nginx -> web, web side)": dataclasses.asdict(web_sockets),
                "nginx upstream side": dataclasses.asdict(upstream_sockets),
                "nginx client side": dataclasses.asdict(client_sockets),
            },
            "slab_object_bytes": slab_object_bytes(),
            **buffer_limits(),
        }
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500], "log": server.log_tail(800)}
    finally:
        await fleet.close_streams()
        await driver.close()
        await monitor.aclose()
        await asyncio.to_thread(server.stop)


def _nginx_rss(server: Proxied) -> int:
    return rss_bytes(server.nginx_pids())


def realistic_draft(job_id: str, number: int, total: int) -> EventDraft:
    """A progress event as a task reports it: step, percent, counts and a message."""
    return EventDraft(
        job_id=job_id,
        status=JobStatus.PROGRESS,
        step="process",
        percent=round(100 * number / total, 1),
        current=number,
        total=total,
        message=f"Processed item {number} of {total}",
        ts=time.time(),
    )


def job_footprint(redis_url: str, sizes: Sizes) -> list[dict[str, Any]]:
    """Per history length: Redis memory of a job whose history is full."""
    client = redis.Redis.from_url(redis_url)
    rows = []
    try:
        sha = client.script_load(PUBLISH)
        for history in sizes.histories:
            prefix = f"j{uuid.uuid4().hex[:8]}"
            settings = Settings(redis_url=redis_url, key_prefix=prefix, history=history)
            keyspace = KeySpace(prefix)
            jobs = [f"{prefix}-job-{i}" for i in range(sizes.memory_jobs)]
            before = int(client.info("memory")["used_memory"])  # type: ignore[index]
            for job in jobs:
                keys = keyspace.job(job)
                pipe = client.pipeline(transaction=False)
                drafts = [EventDraft(job_id=job, status=JobStatus.STARTED)]
                drafts += [realistic_draft(job, n, history) for n in range(1, history + 1)]
                for draft in drafts:
                    call = publish_call(keys, draft, settings)
                    pipe.evalsha(sha, len(call.keys), *call.keys, *call.args)
                pipe.execute()
            after = int(client.info("memory")["used_memory"])  # type: ignore[index]
            sample = keyspace.job(jobs[0])
            state = client.memory_usage(sample.state, samples=0) or 0
            stored = client.memory_usage(sample.history, samples=0) or 0
            events = client.lrange(sample.history, 0, -1)
            rows.append(
                {
                    "history": history,
                    "events_kept": len(events),
                    "event_bytes": sum(map(len, events)) / max(len(events), 1),  # type: ignore[arg-type]
                    "state_bytes": state,
                    "history_bytes": stored,
                    "used_memory_per_job": (after - before) / len(jobs),
                }
            )
            for job in jobs:
                client.delete(*keyspace.job(job).all_keys)
    finally:
        client.close()
    return rows


# -- the report ------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def best_step(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest step with p99 <= 50 ms and nothing lost."""
    good = [s for s in steps if not s["lost"] and (s["p99_ms"] or 1e9) <= 50]
    return max(good, key=lambda s: s["delivered_per_s"], default=None)


def fanout_table(results: dict[str, dict[str, Any]], sizes: Sizes) -> str:
    names = list(results)
    rows = [
        "| measure | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]

    def row(label: str, pick: Any) -> None:
        cells = []
        for name in names:
            result = results[name]
            cells.append("error" if "error" in result else pick(result))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    def at_best(key: str, digits: int = 0) -> Any:
        return lambda r: _f((best_step(r["steps"]) or {}).get(key), digits)

    latency = sizes.latency_rate * sizes.clients // sizes.jobs
    row("streams per web process", lambda r: " / ".join(map(str, r["streams_per_process"])))
    row("highest deliveries/s with p99 <= 50 ms, none lost", at_best("delivered_per_s"))
    row("  its p99 ms", at_best("p99_ms", 1))
    row("  web processes' CPU % (of one core)", at_best("web_cpu_pct"))
    row("  nginx CPU %", at_best("nginx_cpu_pct"))
    row("  load generators + publisher + Redis CPU %", lambda r: _f(_load(best_step(r["steps"]))))
    row(f"{latency:,} deliveries/s: p50 ms", lambda r: _f(r["latency"]["p50_ms"], 1))
    row(f"{latency:,} deliveries/s: p99 ms", lambda r: _f(r["latency"]["p99_ms"], 1))
    row(
        "job channels subscribed per process",
        lambda r: " / ".join(_f(v) for v in r["latency"]["watched_jobs"]),
    )
    row(
        "Redis pub/sub deliveries per published event",
        lambda r: _f(r["latency"]["redis_deliveries"] / max(r["latency"]["published"], 1), 2),
    )
    row("Redis output bytes per pub/sub delivery", at_best("redis_bytes_per_redis_delivery"))
    row("bytes written per client delivery: web processes", at_best("web_bytes_per_delivery"))
    row("bytes written per client delivery: nginx", at_best("nginx_bytes_per_delivery"))
    steps = [
        "",
        "Every step: delivered/s, lost, p99 ms, CPU % of the web processes / nginx / the load",
        "",
    ]
    steps += ["| published/s | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for rate in sizes.rates:
        cells = []
        for name in names:
            found = [s for s in results[name].get("steps", []) if s["rate"] == rate]
            if not found:
                cells.append("")
                continue
            s = found[0]
            cells.append(
                f"{_f(s['delivered_per_s'])}/s, {s['lost']:,} lost, {_f(s['p99_ms'], 1)} ms, "
                f"{_f(s['web_cpu_pct'])} / {_f(s['nginx_cpu_pct'])} / {_f(_load(s))} %"
            )
        steps.append(f"| {rate:,} | " + " | ".join(cells) + " |")
    return "\n".join(rows + steps)


def _load(s: dict[str, Any] | None) -> float | None:
    if s is None:
        return None
    return s["loadgen_cpu_pct"] + s["publisher_cpu_pct"] + s["redis_cpu_pct"]


def streams_table(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"Error: {result['error']}"
    rows = [
        "| measure | value |",
        "| --- | --- |",
        f"| streams held (through nginx, on one web process) | {result['streams']:,} of "
        f"{result['asked']:,} asked{_failures(result['failed'])} |",
        f"| web process RSS per stream | {_f(result['web_rss_per_stream'])} bytes |",
        f"| nginx RSS per stream | {_f(result['nginx_rss_per_stream'])} bytes |",
    ]
    for side, mem in result["socket_buffers"].items():
        per = mem["buffer_bytes"] / max(mem["sockets"], 1)
        rows.append(
            f"| kernel buffers per socket, {side} ({mem['sockets']:,} sockets) | {_f(per)} bytes |"
        )
    slab = result["slab_object_bytes"]
    if slab:
        parts = " + ".join(f"{name} {size}" for name, size in slab.items())
        rows.append(f"| kernel objects per socket ({parts}) | {sum(slab.values()):,} bytes |")
    wmem, rmem = result["tcp_wmem"], result["tcp_rmem"]
    rows.append(f"| buffer limits of this kernel (min default max): tcp_wmem | {' '.join(wmem)} |")
    rows.append(f"| tcp_rmem | {' '.join(rmem)} |")
    return "\n".join(rows)


def _failures(failed: dict[str, int]) -> str:
    return "".join(f"; {n:,} failed: {why}" for why, n in failed.items())


def jobs_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| PROGRESS_HISTORY | events kept | bytes per stored event | state hash | history list "
        "| used_memory per job |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['history']:,} | {r['events_kept']:,} | {_f(r['event_bytes'])} | "
            f"{r['state_bytes']:,} B | {r['history_bytes']:,} B | "
            f"{_f(r['used_memory_per_job'])} B |"
        )
    return "\n".join(lines)


def block(results: dict[str, Any], sizes: Sizes, command: str, load: str, started: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    parts = [
        "### Scale-out figures",
        f"Run of {when} ({(time.time() - started) / 60:.0f} min), command: `{command}`; "
        f"one run. Machine: {machine_info().describe()}; load average at the start: {load}.",
        "Placement: the web processes and nginx (one worker) may use both cores; the load "
        "generators, the publishing harness and Redis are pinned to core 1. So with 2 web "
        "processes the second one shares a core with the whole load: these figures show "
        "what nginx and a second process cost and change, not how far 2 processes scale "
        "(that needs the load on other machines).",
    ]
    if "fanout" in results:
        parts += [
            f"#### 1 vs 2 web processes behind nginx: {sizes.clients:,} clients over "
            f"{sizes.jobs} jobs, {sizes.step_seconds:g} s per rate",
            fanout_table(results["fanout"], sizes),
        ]
    if "streams" in results:
        parts += [
            f"#### Memory per stream: {sizes.idle_streams:,} idle streams over "
            f"{sizes.idle_jobs:,} jobs",
            streams_table(results["streams"]),
        ]
    if "jobs" in results:
        parts += [
            f"#### Redis memory per job: {sizes.memory_jobs} jobs, each with a full history "
            "of progress events (step, percent, current/total, message)",
            jobs_table(results["jobs"]),
        ]
    return "\n\n".join(parts) + "\n"


# -- the command -----------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaleout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--scenarios", default="fanout,streams,jobs")
    parser.add_argument("--docs", type=Path, default=None, help="Markdown file to write into")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args(argv)


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
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
    (args.results / f"scaleout-{stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    docs = args.docs or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    if docs is not None and not args.no_docs:
        document.write_docs(docs, text, begin=BEGIN, end=END)
        print(f"written into {docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
