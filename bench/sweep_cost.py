"""The keep-alive sweep's own cost, in process: what one tick holds the event loop for.

    .venv/bin/python -m bench.sweep_cost [streams]       (default 10,000)

Real `Subscriber`s, parked as under a live stream, in a real `Keepalive`
(`progress_streamer/web/streaming/keepalive.py`), with a sink that takes every write
and no socket: the figures are the sweep's Python work, not the kernel's writes (a ping
to a real socket adds its `send()`: several µs on loopback). Prints the CPU of a round
(every slot once: the work per quarter second), the longest a tick holds the loop, and
a worst-case tick where every stream of the slot is due for a ping.
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

ROUNDS = 30


class Sink:
    gone = False

    def write(self, body: bytes) -> bool:
        return True


async def measure(streams: int) -> dict[str, float]:
    settings = Settings(redis_url="redis://127.0.0.1:1")  # never connected
    hub = SubscriptionHub(settings, None, None, Metrics(), client_name="bench")  # type: ignore[arg-type]
    keepalive = Keepalive(hub, settings.ping_seconds, exiting=lambda: False)
    loop = asyncio.get_running_loop()
    for i in range(streams):
        sub = Subscriber([f"job{i % 1000}"], capacity=10, lifetime=3600)
        sub.sink = Sink()
        sub._waiter = loop.create_future()  # parked: pings are written straight out
        keepalive.add(sub)
    slots = keepalive._slots
    rounds, ticks = [], []
    for _ in range(ROUNDS):
        started = time.process_time()
        for slot in slots:
            tick = time.perf_counter()
            keepalive.visit(slot)
            ticks.append(time.perf_counter() - tick)
        rounds.append(time.process_time() - started)
    for slot in slots:
        for sub in slot:
            sub.ping_at, sub.wrote = 0.0, False
    started = time.perf_counter()
    keepalive.visit(slots[0])
    return {
        "streams": streams,
        "slots": len(slots),
        "tick_s": keepalive.tick,
        "round_cpu_ms": 1e3 * statistics.median(rounds),
        "tick_median_ms": 1e3 * statistics.median(ticks),
        "tick_max_ms": 1e3 * max(ticks),
        "tick_all_pinged_ms": 1e3 * (time.perf_counter() - started),
    }


def main() -> None:
    streams = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    for name, value in asyncio.run(measure(streams)).items():
        print(f"{name}: {value:,.3f}" if isinstance(value, float) else f"{name}: {value:,}")


if __name__ == "__main__":
    main()
