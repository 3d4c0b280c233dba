"""One shared sweep over every open stream, spread thin: pings, lifetimes and shutdown.

Instead of a timer per connection, a single task looks after all streams (opened in
`streaming/opening.py`): a stream whose client left is ended (under the direct writer,
`streaming/direct_writer.py`), a stream past its (jittered) lifetime is ended, a stream
that sent nothing for a while gets `: ping`, and when uvicorn starts shutting down
(SIGTERM) every stream is ended so clients resume elsewhere.

The work is spread over time, because it runs on the loop that delivers live events:
walking 10,000 streams in one go took 3-5 ms, four times a second, and a ping round
wrote 10,000 pings at once (tens of ms with the sockets' writes); every live delivery
arriving meanwhile waited (docs/benchmarks.md, issue 16's section; `python -m
bench.sweep_cost` measures a tick). So:
- **a timing wheel of slots**: each stream sits in one of `slots` sets (the smallest when
  it opens), and each tick visits one slot; a round of all slots takes `round_seconds`
  (at most a quarter second), so a stream is still looked at once per round, and a tick
  looks at 1/`slots` of the streams. Nothing per event, no timer per stream;
- **a ping phase per stream**: each stream has its own next ping check (`ping_at`), the
  first one drawn at random within the first window, so pings go out at an even rate
  instead of all in the same tick. At a check, a stream that wrote nothing since the
  previous one (`Subscriber.wrote`, a flag the writes set, no clock read per event) gets
  a ping; the next check is half a ping interval away, less a round. Since a check
  comes at most a round late, two checks are at most half an interval apart, so no
  stream stays silent longer than `PROGRESS_PING_SECONDS`;
- shutdown is the exception: `drain` ends every stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable

from progress_streamer.web.streaming.hub import SubscriptionHub
from progress_streamer.web.streaming.subscriber import Subscriber

ROUND_SECONDS = 0.25  # every stream is looked at this often (a client that left, lifetime)
SLOTS = 16  # ticks per round: each visits 1/16 of the streams
MIN_TICK_SECONDS = 0.01  # fewer slots when the round is short (tiny ping intervals)


def uvicorn_is_exiting() -> bool:
    """True once uvicorn's signal handler has set `should_exit` (it owns SIGTERM).

    uvicorn only stops waiting for open connections after its graceful timeout, and runs
    the lifespan shutdown after that; streams must end before, so we look at its flag.
    """
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


class Keepalive:
    """The sweep: `add` a stream once it is open, `discard` it when it ends."""

    def __init__(
        self,
        hub: SubscriptionHub,
        ping_seconds: float,
        *,
        exiting: Callable[[], bool] = uvicorn_is_exiting,
    ) -> None:
        self.hub = hub
        self.ping_seconds = ping_seconds
        # A round is at most a quarter of the ping interval, so that a check that comes a
        # round late still leaves room for the ping (see the module docstring).
        self.round_seconds = min(ping_seconds / 4, ROUND_SECONDS)
        slots = max(1, min(SLOTS, int(self.round_seconds / MIN_TICK_SECONDS)))
        self.tick = self.round_seconds / slots
        self._slots: list[set[Subscriber]] = [set() for _ in range(slots)]
        self.exiting = exiting
        self.draining = False
        self._task: asyncio.Task[None] | None = None

    @property
    def streams(self) -> int:
        return sum(len(slot) for slot in self._slots)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-keepalive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add(self, sub: Subscriber) -> None:
        """Look after this stream from now on, in the slot with the fewest streams; its
        first ping check falls anywhere in the first window, so pings stay spread."""
        if self.draining:
            sub.close("shutdown")
        index = min(range(len(self._slots)), key=lambda i: len(self._slots[i]))
        sub.sweep_slot = index
        sub.ping_at = time.monotonic() + random.random() * self._quiet_window()
        self._slots[index].add(sub)

    def discard(self, sub: Subscriber) -> None:
        if sub.sweep_slot is not None:
            self._slots[sub.sweep_slot].discard(sub)
            sub.sweep_slot = None

    def drain(self) -> None:
        """End every open stream now, and every stream that opens from now on."""
        self.draining = True
        for slot in self._slots:
            for sub in slot:
                sub.close("shutdown")
        for sub in self.hub.subscribers():  # and those still opening
            sub.close("shutdown")

    def _quiet_window(self) -> float:
        """From one ping check to the next: with the round it may come late, at most half
        the ping interval, so a write just after a check is followed within the interval
        by a second check, which pings if nothing else went out."""
        return self.ping_seconds / 2 - self.round_seconds

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slot = 0
        next_tick = loop.time()
        while True:
            # With no stream open, a tick per round is enough (an idle process stays quiet).
            next_tick += self.tick if any(self._slots) else self.round_seconds
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            if not self.draining and self.exiting():
                self.drain()
            self.visit(self._slots[slot])
            slot = (slot + 1) % len(self._slots)
            if loop.time() > next_tick + self.round_seconds:
                next_tick = loop.time()  # far behind (a stalled loop): no burst of ticks

    def visit(self, subs: set[Subscriber]) -> None:
        """One tick's share: end what must end, ping what is due for it."""
        if self.draining:
            for sub in subs:
                sub.close("shutdown")
            return
        now = time.monotonic()
        quiet = self._quiet_window()
        for sub in list(subs):  # a copy: nothing here may change the set, but be sure
            if sub.sink is not None and sub.sink.gone:
                sub.close("disconnect")
            elif now >= sub.deadline:
                sub.close("lifetime")
            elif now >= sub.ping_at:
                if not sub.wrote:
                    sub.request_ping()
                sub.wrote = False
                sub.ping_at = now + quiet
