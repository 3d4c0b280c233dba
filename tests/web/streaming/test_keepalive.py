"""The shared keep-alive sweep (`streaming/keepalive.py`): pings within the interval and
spread over time, ends for clients that left, lifetimes and shutdown.

Real `Subscriber`s whose writer is parked, as under a live stream, with a sink that
records what the sweep and the fan-out write (the socket side is covered by the route
and reliability tests through a real server)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
from collections.abc import AsyncIterator

import pytest

from progress_streamer.protocol.settings import Settings
from progress_streamer.web.metrics import Metrics
from progress_streamer.web.streaming.frames import PING
from progress_streamer.web.streaming.hub import SubscriptionHub
from progress_streamer.web.streaming.keepalive import Keepalive
from progress_streamer.web.streaming.opening import SubscriberFrames
from progress_streamer.web.streaming.subscriber import Subscriber
from tests.support.server import eventually
from tests.web.streaming.test_subscriber import delivery, replayed

PING_SECONDS = 0.4
MARGIN = 0.3  # the loop may run late on a loaded machine: generous, never tight


class RecordingSink:
    """A client's socket that takes every write, with the loop time of each ping."""

    def __init__(self) -> None:
        self.gone = False
        self.pings: list[float] = []
        self.frames = 0

    def when_gone(self, callback: object) -> bool:
        return False  # polled, as under uvicorn's own protocol

    def write(self, body: bytes) -> bool:
        if body == PING:
            self.pings.append(asyncio.get_running_loop().time())
        else:
            self.frames += 1
        return True


class Streams:
    """Open streams as the sweep sees them: subscriber, sink, and the parked writer."""

    def __init__(self, keepalive: Keepalive) -> None:
        self.keepalive = keepalive
        self.writers: list[asyncio.Task[object]] = []

    async def open(
        self, lifetime: float = 3600.0, job: str = "job1"
    ) -> tuple[Subscriber, RecordingSink]:
        sub = replayed(Subscriber([job], capacity=10, lifetime=lifetime))
        sink = RecordingSink()
        sub.sink = sink
        self.writers.append(asyncio.create_task(write_out(sub, sink)))
        await asyncio.sleep(0)  # the writer parks: from now on, frames go straight out
        self.keepalive.add(sub)
        return sub, sink


async def write_out(sub: Subscriber, sink: RecordingSink) -> None:
    """The stream's own task (`streaming/response.py`): what had to be queued."""
    frames = SubscriberFrames(sub)
    while (frame := await frames.next_frame()) is not None:
        sink.write(frame)


@pytest.fixture
async def streams(settings: Settings) -> AsyncIterator[Streams]:
    hub = SubscriptionHub(settings, None, None, Metrics(), client_name="test")  # type: ignore[arg-type]
    exiting = False
    keepalive = Keepalive(hub, PING_SECONDS, exiting=lambda: exiting)
    keepalive.start()
    opened = Streams(keepalive)
    try:
        yield opened
    finally:
        await keepalive.stop()
        for task in opened.writers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_quiet_streams_get_a_ping_within_every_interval_and_not_all_at_once(
    streams: Streams,
) -> None:
    start = asyncio.get_running_loop().time()
    sinks = [(await streams.open(job=f"job{i}"))[1] for i in range(300)]
    await eventually(lambda: all(len(s.pings) >= 4 for s in sinks), within=10)
    for sink in sinks:
        times = [start, *sink.pings]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) <= PING_SECONDS + MARGIN, gaps
    # The first pings of the streams, opened together, went out over many ticks: the
    # old sweep wrote every one of them in the same tick.
    first = sorted(s.pings[0] for s in sinks)
    ticks = {round(t / streams.keepalive.tick) for t in first}
    assert len(ticks) >= 5, sorted(ticks)


async def test_an_idle_stream_gets_one_ping_per_interval_not_two(streams: Streams) -> None:
    # The ping is owed after a silence of PROGRESS_PING_SECONDS: checking every half
    # interval for "nothing written since the last check" pinged idle streams twice as
    # often as that (what Nchan's ping interval does once).
    _, sink = await streams.open()
    await eventually(lambda: len(sink.pings) >= 5, within=10)
    gaps = [b - a for a, b in itertools.pairwise(sink.pings)]
    keepalive = streams.keepalive
    window = PING_SECONDS - keepalive.round_seconds
    # A ping keeps its stream's phase, so one after a late check (up to a round late:
    # the sweep naps a round while no stream is open) comes that much sooner.
    assert statistics.median(gaps) >= window - 2 * keepalive.tick, gaps
    assert min(gaps) >= window - keepalive.round_seconds - 2 * keepalive.tick, gaps
    assert max(gaps) <= PING_SECONDS + MARGIN, gaps


async def test_a_write_moves_the_next_ping_a_whole_interval_away(streams: Streams) -> None:
    sub, sink = await streams.open()
    await eventually(lambda: len(sink.pings) >= 1, within=5)
    await asyncio.sleep(PING_SECONDS / 2)
    assert sub.offer(delivery(1))  # written straight to the sink
    wrote_at = asyncio.get_running_loop().time()
    await eventually(lambda: len(sink.pings) >= 2, within=5)
    assert sink.pings[1] - wrote_at >= PING_SECONDS - streams.keepalive.round_seconds - 0.02
    assert sink.pings[1] - wrote_at <= PING_SECONDS + MARGIN


async def test_a_stream_that_keeps_writing_gets_no_ping(streams: Streams) -> None:
    sub, sink = await streams.open()
    quiet_sub, quiet = await streams.open(job="job2")
    seq = 0
    while len(quiet.pings) < 3:  # three ping intervals of the quiet neighbour
        seq += 1
        assert sub.offer(delivery(seq))  # written straight to the sink by the "fan-out"
        await asyncio.sleep(PING_SECONDS / 8)
    assert sink.frames == seq
    assert sink.pings == []
    assert quiet_sub.closed is None and sub.closed is None


async def test_a_client_that_left_and_a_stream_past_its_lifetime_are_ended(
    streams: Streams,
) -> None:
    left, sink = await streams.open()
    short, _ = await streams.open(lifetime=0.3, job="job2")
    kept, _ = await streams.open(job="job3")
    sink.gone = True
    await eventually(lambda: left.closed == "disconnect", within=2)
    await eventually(lambda: short.closed == "lifetime", within=2)
    assert kept.closed is None


async def test_shutdown_ends_every_stream_and_any_opened_after(streams: Streams) -> None:
    subs = [(await streams.open(job=f"job{i}"))[0] for i in range(50)]
    streams.keepalive.drain()
    assert all(sub.closed == "shutdown" for sub in subs)
    late, _ = await streams.open()
    assert late.closed == "shutdown"


async def test_a_discarded_stream_is_no_longer_looked_after(streams: Streams) -> None:
    subs = [(await streams.open(job=f"job{i}"))[0] for i in range(40)]
    for sub in subs:
        streams.keepalive.discard(sub)
    assert streams.keepalive.streams == 0
