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
bench.sweep_cost` measures a tick). And a stream is looked at only when something about
it is due, not every quarter second: holding 10,000 idle streams cost a tenth of a core
when each was looked at four times a second. So:
- **a timing wheel of due times**: each stream sits in the bucket of its next check
  (`Subscriber.due_slot`), the earlier of its next ping check and its lifetime's end; each
  tick (1/16 of a quarter second) visits the buckets whose time has come, so a stream
  costs about one visit per ping interval (its check a window after its last write),
  whatever the number of streams;
- **a ping only when a stream was silent for a window**: the writes stamp the stream
  (`Subscriber.last_write`, one clock read per write), and its next check is a window
  (`PROGRESS_PING_SECONDS` less a round) after its last write; at the check, a stream
  that wrote nothing for the window, or nothing since its previous check, gets a ping.
  A check comes at most a round late, so no stream stays silent longer than
  `PROGRESS_PING_SECONDS`, and an idle stream gets one ping per interval (as Nchan's
  `nchan_eventsource_ping_interval`), not two: checking every half interval on a
  "wrote since the last check" flag alone pinged idle streams twice as often;
- **a ping phase per stream**: the first check is drawn at random within the first
  window (and pings if nothing went out since the stream opened), and after a ping the
  next check keeps that phase even when a late tick checked many streams at once, so
  pings go out at an even rate instead of all in the same tick;
- **a client that left ends its stream when it leaves**: the direct writer tells the
  subscriber (`Sink.when_gone`, from the server protocol's `connection_lost`:
  web/server_protocol.py). A sink that cannot tell (uvicorn's own httptools protocol) is
  polled instead: those streams also sit in a round of `slots` sets, one visited per
  tick, so each is still looked at once per round (a quarter second);
- shutdown is the exception: `drain` ends every stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
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
        # Polled for a client that left, one set per tick (sinks that cannot tell).
        self._polled: list[set[Subscriber]] = [set() for _ in range(slots)]
        # Due times: bucket `k % len` holds the streams due in [k * tick, (k + 1) * tick),
        # within one lap of the wheel (a next check is at most a window away).
        self._due: list[set[Subscriber]] = [
            set() for _ in range(math.ceil(self._window() / self.tick) + 2)
        ]
        self._next_bucket = self._bucket_of(time.monotonic())  # the first not visited
        self._count = 0
        self.exiting = exiting
        self.draining = False
        self._task: asyncio.Task[None] | None = None

    @property
    def streams(self) -> int:
        return self._count

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-keepalive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add(self, sub: Subscriber) -> None:
        """Look after this stream from now on; its first ping check falls anywhere in the
        first window, so pings stay spread. It is polled for a client that left until its
        sink says it will tell (`Subscriber.gone_told`)."""
        if self.draining:
            sub.close("shutdown")
        index = min(range(len(self._polled)), key=lambda i: len(self._polled[i]))
        sub.sweep_slot = index
        self._polled[index].add(sub)
        now = time.monotonic()
        sub.last_check = now
        sub.ping_at = now + random.random() * self._window()
        self._count += 1
        self._schedule(sub)

    def discard(self, sub: Subscriber) -> None:
        if sub.sweep_slot is not None:
            self._polled[sub.sweep_slot].discard(sub)
            sub.sweep_slot = None
        if sub.due_slot is not None:
            self._due[sub.due_slot].discard(sub)
            sub.due_slot = None
            self._count -= 1

    def drain(self) -> None:
        """End every open stream now, and every stream that opens from now on."""
        self.draining = True
        for bucket in self._due:
            for sub in bucket:
                sub.close("shutdown")
        for sub in self.hub.subscribers():  # and those still opening
            sub.close("shutdown")

    def _window(self) -> float:
        """The silence after which a stream is pinged: with the round a check may come
        late, the ping interval less a round."""
        return self.ping_seconds - self.round_seconds

    def _bucket_of(self, when: float) -> int:
        return int(when / self.tick)

    def _schedule(self, sub: Subscriber) -> None:
        """Put the stream in the bucket of its next check (never one already visited)."""
        bucket = max(self._bucket_of(min(sub.ping_at, sub.deadline)), self._next_bucket)
        sub.due_slot = bucket % len(self._due)
        self._due[sub.due_slot].add(sub)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slot = 0
        next_tick = loop.time()
        while True:
            # With no stream open, a tick per round is enough (an idle process stays quiet).
            next_tick += self.tick if self._count else self.round_seconds
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            if not self.draining and self.exiting():
                self.drain()
            self.poll(self._polled[slot])
            slot = (slot + 1) % len(self._polled)
            self.visit_due(time.monotonic())
            if loop.time() > next_tick + self.round_seconds:
                next_tick = loop.time()  # far behind (a stalled loop): no burst of ticks

    def poll(self, subs: set[Subscriber]) -> None:
        """One tick's share of the streams whose sink cannot tell that its client left."""
        for sub in list(subs):  # a copy: a stream whose sink tells leaves the set
            if sub.gone_told:
                subs.discard(sub)
                sub.sweep_slot = None
            elif sub.sink is not None and sub.sink.gone:
                sub.close("disconnect")

    def visit_due(self, now: float) -> None:
        """Check the streams of every bucket whose time has come (one, unless the loop
        was late), and put each back in the bucket of its next check."""
        current = self._bucket_of(now)
        first = max(self._next_bucket, current - len(self._due) + 1)
        self._next_bucket = current
        for bucket in range(first, current):
            due = self._due[bucket % len(self._due)]
            if due:
                subs = list(due)
                due.clear()
                for sub in subs:
                    sub.due_slot = None
                    self._count -= 1
                self.check(subs, now)

    def check(self, subs: list[Subscriber], now: float) -> None:
        """End what must end, ping what is due for it; the rest is scheduled again."""
        window = self._window()
        for sub in subs:
            if self.draining:
                sub.close("shutdown")
            elif sub.sink is not None and sub.sink.gone:
                sub.close("disconnect")
            elif now >= sub.deadline:
                sub.close("lifetime")
            elif now >= sub.ping_at:
                self._ping_if_silent(sub, now, window)
            if sub.closed is None:
                self._count += 1
                self._schedule(sub)

    @staticmethod
    def _ping_if_silent(sub: Subscriber, now: float, window: float) -> None:
        """Ping a stream silent for the window (or since its last check), and set when to
        look again: a window after its last write."""
        if sub.last_write <= sub.last_check or now - sub.last_write >= window:
            sub.request_ping()
            sub.last_write = now
            # The stream's own phase, not the visit's time: streams checked together by a
            # late tick (an idle loop sleeps a round) keep their spread.
            sub.ping_at += window
            if sub.ping_at <= now:  # far behind (a stalled loop): a new phase
                sub.ping_at = now + random.random() * window
        else:
            sub.ping_at = sub.last_write + window
        sub.last_check = now
