"""Opening a stream over the hub, for one job or a watch of many: cap, subscribe, replay.

Order matters (SPEC.md, "The event stream"): the client is held, its channels subscribed
and confirmed by Redis, and only then the job's state read, so live events published
meanwhile wait behind the replay and `seq` drops the overlap. `routes/job_events.py` and
`routes/watches.py` use it; the bytes go out through `streaming/response.py`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from progress_streamer.protocol.history import CatchUp, CorruptState
from progress_streamer.web.errors import ApiError
from progress_streamer.web.services import Services
from progress_streamer.web.streaming.catch_up import state_lost
from progress_streamer.web.streaming.frames import PING
from progress_streamer.web.streaming.hub import HubUnavailable
from progress_streamer.web.streaming.response import EventStreamResponse
from progress_streamer.web.streaming.subscriber import Delivery, Sink, Subscriber, frame_of

MAX_ID_DIGITS = 16


def parse_seq(raw: str | None) -> int | None:
    """A last event id as a seq; None for absent or not a number (gets the snapshot)."""
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_ID_DIGITS:
        return None
    return int(raw)


class CaughtUp(Exception):
    """Every job already sent its terminal event to this client: 204."""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    job_ids: tuple[str, ...]
    after: tuple[int | None, ...]  # per job, the client's last seq
    client: str
    watch: bool  # `id:` is the dot-separated cursor, and unknown jobs end with StateLost


async def open_stream(services: Services, req: StreamRequest) -> EventStreamResponse:
    try:
        services.limiter.acquire(req.client)
    except ApiError:
        services.metrics.streams_refused.inc()
        raise
    settings = services.settings
    sub = Subscriber(
        req.job_ids,
        capacity=settings.client_queue,
        lifetime=settings.max_stream_seconds,
        client=req.client,
        cursor=req.after if req.watch else None,
        on_coalesce=services.metrics.frames_coalesced.inc,
    )
    try:
        await _subscribe_and_replay(services, req, sub)
    except BaseException:
        await _close(services, sub)
        raise
    services.keepalive.add(sub)  # pings, lifetime, a client that left, shutdown
    source = SubscriberFrames(sub)

    async def on_close() -> None:
        await _close(services, sub)

    return EventStreamResponse(
        source,
        first=b"",
        send_timeout=settings.send_timeout,
        metrics=services.metrics,
        on_close=on_close,
    )


async def _subscribe_and_replay(services: Services, req: StreamRequest, sub: Subscriber) -> None:
    for job_id in req.job_ids:
        sub.hold(job_id)
    try:
        await asyncio.gather(*(services.hub.subscribe(sub, job_id) for job_id in req.job_ids))
    except HubUnavailable:
        raise ApiError(503, "not_ready", "Redis is unavailable", {"Retry-After": "2"}) from None
    catch_ups = await _read_all(services, req)
    done = 0
    for job_id, after, catch_up in zip(req.job_ids, req.after, catch_ups, strict=True):
        if catch_up is None and not req.watch:
            raise ApiError(404, "not_found", "no such job")
        caught_up = is_caught_up(catch_up, after)
        done += caught_up
        sub.last_seq[job_id] = resume_point(catch_up, after)
        if caught_up:
            sub.finished.add(job_id)
        replay = [] if caught_up else _replay(job_id, after, catch_up)
        if not sub.release(job_id, replay, None if catch_up is None else catch_up.epoch):
            services.hub.catch_ups.recheck(job_id, [sub])
    if done == len(req.job_ids):
        raise CaughtUp


async def _read_all(services: Services, req: StreamRequest) -> list[CatchUp | None]:
    """Every job's catch-up. Redis failing: 503. A job's unreadable state: for a job
    stream, `CorruptState` (a clear 500); in a watch, that job alone ends (`StateLost`)."""
    reads = [
        services.reader.events_since(services.keyspace.job(job_id), after)
        for job_id, after in zip(req.job_ids, req.after, strict=True)
    ]
    results = await asyncio.gather(*reads, return_exceptions=True)
    for result in results:
        if isinstance(result, RedisError | OSError):
            raise ApiError(503, "not_ready", "Redis is unavailable", {"Retry-After": "2"})
        if isinstance(result, CorruptState) and not req.watch:
            raise result
        if isinstance(result, BaseException) and not isinstance(result, CorruptState):
            raise result
    return [None if isinstance(r, BaseException) else r for r in results]


def is_caught_up(catch_up: CatchUp | None, after: int | None) -> bool:
    """Finished, and the client saw the terminal event (any id at or past its seq)."""
    return (
        catch_up is not None
        and catch_up.is_terminal
        and after is not None
        and (after >= catch_up.seq)
    )


def resume_point(catch_up: CatchUp | None, after: int | None) -> int:
    """The seq the client's stream goes on from: its own, unless it gets the snapshot."""
    if after is None or catch_up is None or catch_up.from_snapshot:
        return 0
    return after


def _replay(job_id: str, after: int | None, catch_up: CatchUp | None) -> list[Delivery]:
    if catch_up is None:  # a watched job whose state is gone (or unreadable)
        return [state_lost(job_id, after or 0, 1, 0)]
    return [frame_of(event) for event in catch_up.events]


async def _close(services: Services, sub: Subscriber) -> None:
    sub.close("closed")
    services.keepalive.discard(sub)
    for job_id in sub.job_ids:
        await services.hub.unsubscribe(sub, job_id)
    services.limiter.release(sub.client)


class SubscriberFrames:
    """A subscriber's queued frames, as the stream writer takes them (streaming/response.py)."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub

    def attach(self, sink: Sink) -> None:
        sub = self.sub
        sub.sink = sink
        sub.gone_told = sink.when_gone(functools.partial(sub.close, "disconnect"))

    async def next_frame(self) -> bytes | None:
        sub = self.sub
        batch = await sub.next()
        sub.last_write = time.monotonic()
        if batch:
            if len(batch) == 1:
                return sub.frame(batch[0])
            return b"".join([sub.frame(delivery) for delivery in batch])
        if sub.ended:
            return None
        sub.ping_due = False
        return PING

    def disconnected(self) -> None:
        self.sub.close("disconnect")
