"""The web process on a Redis Cluster against one Redis: its CPU per delivery in the
fan-out steps of `bench.scenarios` (the same clients, publisher and `step`), one round of
each mode after the other so that both see the same machine noise.

A mode is where the progress state lives: one redis-server, or the primaries of a
cluster (`REDIS_URL=redis+cluster://...`, with the Celery broker and ARQ queue on a
non-cluster Redis). Each round starts a fresh web process pinned to the server core;
Redis (every primary) and the load stay on the load core, as in `bench.run`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from bench.drivers import OursDriver
from bench.fleet import Fleet
from bench.scenarios import Context, step, streams_for
from bench.servers import Backend, start_server


@dataclass(frozen=True, slots=True)
class Mode:
    """One place for the progress state: its backend (URL, queue URL) and its Redis
    processes (pid and a plain `redis://` URL of each primary)."""

    name: str
    backend: Backend
    pids: tuple[int, ...]
    node_urls: tuple[str, ...]


async def fanout_round(
    mode: Mode, fleet: Fleet, clients: int, jobs: int, rates: tuple[int, ...], seconds: float
) -> dict[str, Any]:
    """A fresh web process on `mode`, `clients` streams over `jobs` jobs, then a step at
    each rate (published events/s); per step what `bench.scenarios.step` measures."""
    prefix = f"c{uuid.uuid4().hex[:8]}"
    backend = dataclasses.replace(mode.backend, key_prefix=prefix)
    server = await asyncio.to_thread(start_server, "ours", backend)
    driver = OursDriver(backend.redis_url, prefix, backend.queue_url)
    monitors = [redis.asyncio.Redis.from_url(url) for url in mode.node_urls]
    ctx = Context(
        server, driver, fleet, backend, monitors[0], mode.pids[0],
        other_monitors=tuple(monitors[1:]), other_redis_pids=mode.pids[1:],
    )  # fmt: skip
    try:
        names = [f"{prefix}-fan-{i}" for i in range(jobs)]
        for job in names:
            await driver.create(job)
        paths, timed = streams_for(names, 0, clients)
        opened = await fleet.connect(server.port, paths, timed)
        await asyncio.sleep(0.5)
        steps = [await step(ctx, names, opened.open_by_path, r, seconds) for r in rates]
        return {"established": opened.established, "steps": steps}
    except Exception as exc:  # the other rounds still get measured
        return {"error": f"{type(exc).__name__}: {exc}"[:500], "log": server.log_tail(800)}
    finally:
        await fleet.close_streams()
        await driver.close()
        for monitor in monitors:
            await monitor.aclose()
        await asyncio.to_thread(server.stop)


async def interleaved_fanout(
    modes: list[Mode],
    fleet: Fleet,
    *,
    rounds: int,
    clients: int,
    jobs: int,
    rates: tuple[int, ...],
    seconds: float,
) -> dict[str, list[dict[str, Any]]]:
    """`rounds` rounds, each mode once per round, alternating which goes first."""
    results: dict[str, list[dict[str, Any]]] = {m.name: [] for m in modes}
    for number in range(rounds):
        for mode in modes if number % 2 == 0 else modes[::-1]:
            found = await fanout_round(mode, fleet, clients, jobs, rates, seconds)
            results[mode.name].append(found)
    return results
