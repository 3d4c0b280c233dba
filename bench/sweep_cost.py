"""The keep-alive sweep's own cost, in process: what it holds the event loop for.

    .venv/bin/python -m bench.sweep_cost [streams]       (default 10,000)

Real `Subscriber`s, parked as under a live stream, in a real `Keepalive`
(`progress_streamer/web/streaming/keepalive.py`), with a sink that takes every write
and no socket: the figures are the sweep's Python work, not the kernel's writes (a ping
to a real socket adds its `send()`: several µs on loopback). The ticks of one ping
interval are run on a simulated clock, twice: with sinks that tell when their client
leaves (the Procfile's server: only due checks) and with sinks that must be polled
(uvicorn's own httptools protocol: each stream also looked at every quarter second).
Prints the sweep's CPU per second of wall time and the longest a tick holds the loop.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from progress_streamer.protocol.settings import Settings
from progress_streamer.web.metrics import Metrics
from progress_streamer.web.streaming.hub import SubscriptionHub
from progress_streamer.web.streaming.keepalive import Keepalive
from progress_streamer.web.streaming.subscriber import Subscriber


class Sink:
    gone = False

    def __init__(self, tells: bool) -> None:
        self.tells = tells

    def when_gone(self, callback: object) -> bool:
        return self.tells

    def write(self, body: bytes) -> bool:
        return True


async def measure(streams: int, tells: bool) -> dict[str, float]:
    settings = Settings(redis_url="redis://127.0.0.1:1")  # never connected
    hub = SubscriptionHub(settings, None, None, Metrics(), client_name="bench")  # type: ignore[arg-type]
    keepalive = Keepalive(hub, settings.ping_seconds, exiting=lambda: False)
    loop = asyncio.get_running_loop()
    for i in range(streams):
        sub = Subscriber([f"job{i % 1000}"], capacity=10, lifetime=3600)
        sub.sink = Sink(tells)
        sub.gone_told = tells
        sub._waiter = loop.create_future()  # parked: pings are written straight out
        keepalive.add(sub)
    polled = keepalive._polled
    ticks = round(settings.ping_seconds / keepalive.tick)  # one ping interval
    start = time.monotonic()
    durations = []
    cpu = time.process_time()
    for k in range(1, ticks + 1):
        tick = time.perf_counter()
        keepalive.poll(polled[k % len(polled)])
        keepalive.visit_due(start + k * keepalive.tick)
        durations.append(time.perf_counter() - tick)
    cpu = time.process_time() - cpu
    return {
        "streams": streams,
        "sinks tell when the client leaves": int(tells),
        "tick_s": keepalive.tick,
        "cpu_ms_per_second": 1e3 * cpu / settings.ping_seconds,
        "tick_median_ms": 1e3 * statistics.median(durations),
        "tick_max_ms": 1e3 * max(durations),
    }


def main() -> None:
    streams = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    for tells in (True, False):
        for name, value in asyncio.run(measure(streams, tells)).items():
            print(f"{name}: {value:,.3f}" if isinstance(value, float) else f"{name}: {value:,}")
        print()


if __name__ == "__main__":
    main()
