"""What one stream and one job cost: the memory inputs of docs/scaling.md.

- `stream_footprint`: idle streams held through nginx (`bench.proxied`) on one web
  process: RSS per stream of the web process and of nginx, the kernel's buffers per
  socket (`ss -m`), this kernel's slab object sizes for a TCP socket and its buffer
  limits;
- `job_footprint`: jobs given a full history of realistic progress events through the
  publish script, then `MEMORY USAGE` of a job's keys and `used_memory` per job.
Run by `bench.scaleout`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio

from bench.drivers import OursDriver
from bench.fleet import Fleet
from bench.machine import rss_bytes
from bench.proxied import Proxied, socket_memory, start_proxied
from bench.scenarios import Context, step, streams_for
from bench.servers import Backend
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import publish_call
from progress_streamer.protocol.scripts import PUBLISH
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus

if TYPE_CHECKING:
    from bench.scaleout import Sizes

SLAB_CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi")


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
