"""The subscription hub: ONE Redis pub/sub connection per web process, for every job.

Streams (`streaming/response.py`) register a `Subscriber` per client; the hub subscribes a job's
channel when its first client arrives and unsubscribes when the last one leaves.

    worker ──publish script──▶ Redis ──PUBLISH {job}:events──▶ hub reader task
      (protocol/publisher.py)    (state, history, channel)       decode once, frame once
                                                                     │ fan-out
                              ┌──────────────────────────────────────┼─────────────┐
                              ▼                                      ▼             ▼
                     Subscriber queue (bounded,            Subscriber queue   ...
                     progress coalesced when full)              │
                              │                                  ▼
                              ▼                            stream writer ──▶ browser
                     stream writer ──`id: 7\\ndata: {...}\\n\\n`──▶ browser (SSE)

Deliberate choices:
- `subscribe` returns only after Redis confirmed the SUBSCRIBE, so the caller's replay
  (read after that) and the live events overlap instead of leaving a gap; the subscriber
  is held during the replay and seq de-duplicates the overlap.
- The connection is a bare redis-py `Connection`, not `PubSub`: a reconnect must be seen
  (to re-subscribe and catch every client up from history), never done silently.
- After a reconnect every client is caught up from the job's history after its own last
  seq; a job whose state is gone gets a `StateLost` failure, for that client only.
- A live event that does not follow a client's last one (a gap in seq, or another
  `epoch`: protocol/incarnation.py) is not delivered: the history decides (`recheck`),
  with one read per job and last seq, not per client. A forged seq is thus never sent,
  and a client whose state Redis lost gets `StateLost` at once, however the job's new
  events are numbered. The loss is reported to Redis (`AsyncPublisher.report_lost`), so
  the job ends `StateLost` for every viewer: the loss wins.
- A catch-up never dies unseen: whatever its read raises, each of its clients is
  released (with the replay, or `StateLost` for state it cannot read) or closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import RedisError

from progress_streamer.protocol.event import MalformedEvent, decode_event, encode_event
from progress_streamer.protocol.history import CatchUp, CorruptState, JobReader
from progress_streamer.protocol.incarnation import SeenState, state_lost_draft
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import AsyncPublisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.web.metrics import Metrics
from progress_streamer.web.streaming.subscriber import Delivery, Subscriber, frame_of

log = logging.getLogger(__name__)

READ_TIMEOUT = 1.0  # the reader wakes this often to check the connection's health
HEALTH_SECONDS = 5.0  # a PING goes out when Redis was quiet this long
BAD_MESSAGE_LOG_SECONDS = 10.0  # malformed messages are logged at most this often
BACKOFF_MAX = 2.0
CONFIRM_TIMEOUT = 5.0  # a stream waits this long for Redis to confirm its SUBSCRIBE


class HubUnavailable(RuntimeError):
    """Redis did not confirm a subscription in time (it is down or unreachable)."""


@dataclass(eq=False)
class _Channel:
    job_id: str
    subscribers: set[Subscriber] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    resync: set[Subscriber] = field(default_factory=set)  # to catch up after a reconnect


class SubscriptionHub:
    """Ref-counted channel subscriptions over one connection, with one reader task."""

    def __init__(
        self,
        settings: Settings,
        reader: JobReader,
        publisher: AsyncPublisher,
        metrics: Metrics,
        *,
        client_name: str,
    ) -> None:
        self.settings = settings
        self.keyspace = KeySpace(settings.key_prefix)
        self.reader = reader
        self.publisher = publisher  # reports lost states (the loss wins)
        self.metrics = metrics
        # No socket timeout: redis-py would arm a timer around every read, i.e. per event.
        # The reader keeps one timer for all its reads (`_read_forever`), and the
        # handshake and writes get `HEALTH_SECONDS` each (`_bounded`), so a reconnect over
        # a silently dead path cannot hang for good.
        self._pool: ConnectionPool = ConnectionPool.from_url(
            settings.redis_url, client_name=client_name, socket_connect_timeout=2.0
        )
        self._channels: dict[str, _Channel] = {}
        self._acks: defaultdict[str, int] = defaultdict(int)  # SUBSCRIBEs awaiting reply
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # catch-ups under way
        self._closing = False
        self._bad_messages = 0
        self._bad_logged_at = float("-inf")
        self.connected = asyncio.Event()

    @property
    def watched_jobs(self) -> int:
        return len(self._channels)

    def subscribers(self) -> list[Subscriber]:
        return list({s for ch in self._channels.values() for s in ch.subscribers})

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="subscription-hub")

    async def close(self) -> None:
        self._closing = True
        for sub in self.subscribers():
            sub.close("shutdown")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        catch_ups = list(self._tasks)
        for task in catch_ups:
            task.cancel()
        await asyncio.gather(*catch_ups, return_exceptions=True)
        if self._conn is not None:
            await self._conn.disconnect()
        await self._pool.disconnect()

    async def subscribe(self, sub: Subscriber, job_id: str) -> None:
        """Add the client to the job's channel; return once Redis confirmed it."""
        name = self.keyspace.job(job_id).channel
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(job_id)
            channel.subscribers.add(sub)
            await self._send_subscribe(name)
        channel.subscribers.add(sub)
        try:
            await asyncio.wait_for(channel.confirmed.wait(), CONFIRM_TIMEOUT)
        except TimeoutError:
            await self.unsubscribe(sub, job_id)
            raise HubUnavailable("Redis did not confirm the subscription") from None

    async def unsubscribe(self, sub: Subscriber, job_id: str) -> None:
        name = self.keyspace.job(job_id).channel
        channel = self._channels.get(name)
        if channel is None or sub not in channel.subscribers:
            return
        channel.subscribers.discard(sub)
        channel.resync.discard(sub)
        if not channel.subscribers:
            del self._channels[name]
            await self._send("UNSUBSCRIBE", name)

    async def _send_subscribe(self, name: str) -> None:
        self._acks[name] += 1  # before the write: the reply may be read while it drains
        if not await self._send("SUBSCRIBE", name):
            self._acks.pop(name, None)  # the reconnect subscribes it

    async def _send(self, *args: str) -> bool:
        """Write a command if connected; a reconnect re-subscribes whatever is needed."""
        conn = self._conn
        if conn is None or not self.connected.is_set():
            return False
        try:
            await _bounded(conn.send_command(*args, check_health=False))
        except (RedisError, OSError) as exc:
            log.warning("pub/sub write failed: %s", exc)
            await conn.disconnect(nowait=True)  # the reader sees it and reconnects
            return False
        return True

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closing:
            try:
                await self._connect()
                backoff = 0.05
                await self._read_forever()
            except (RedisError, OSError) as exc:
                if self._closing:
                    return
                await self._lost_connection(exc)
            except Exception as exc:  # never let the one reader die: log, reconnect
                log.exception("pub/sub reader failed; reconnecting")
                await self._lost_connection(exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _lost_connection(self, exc: BaseException) -> None:
        if self.connected.is_set():
            log.warning("pub/sub connection lost (%s); reconnecting", exc)
            self.metrics.redis_reconnects.inc()
        self.connected.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect(nowait=True)
        self._conn = None
        self._acks.clear()
        for channel in self._channels.values():
            channel.confirmed.clear()

    async def _connect(self) -> None:
        conn: Connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await _bounded(conn.connect())  # type: ignore[no-untyped-call]
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        self._conn = conn
        self.connected.set()
        names = list(self._channels)
        # Live events of every current client wait until its catch-up is queued.
        for channel in self._channels.values():
            channel.resync = set(channel.subscribers)
            for sub in channel.resync:
                sub.hold(channel.job_id)
        if names:
            for name in names:
                self._acks[name] += 1
            await _bounded(conn.send_command("SUBSCRIBE", *names, check_health=False))

    async def _read_forever(self) -> None:
        conn = self._conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        pinged = False
        while True:
            try:
                # One timer for every read: moved forward at most twice a second, not
                # armed and cancelled around each message.
                async with asyncio.timeout(READ_TIMEOUT) as window:
                    while True:
                        reply = await conn.read_response(disconnect_on_error=False)
                        quiet_since, pinged = loop.time(), False
                        self._handle(reply)
                        if window.when() - quiet_since < READ_TIMEOUT / 2:  # type: ignore[operator]
                            window.reschedule(quiet_since + READ_TIMEOUT)
            except TimeoutError:
                pass  # nothing for READ_TIMEOUT: check the connection's health
            now = loop.time()
            if now - quiet_since > 2 * HEALTH_SECONDS and pinged:
                raise ConnectionError("Redis did not answer a PING on the pub/sub connection")
            if now - quiet_since > HEALTH_SECONDS and not pinged:
                await _bounded(conn.send_command("PING", check_health=False))
                pinged = True

    def _handle(self, reply: Any) -> None:
        kind = reply[0]
        if kind == b"message":
            self._fan_out(reply[1].decode(), reply[2])
        elif kind == b"subscribe":
            name = reply[1].decode()
            self._acks[name] -= 1
            channel = self._channels.get(name)
            if self._acks[name] <= 0 and channel is not None:
                self._acks.pop(name, None)
                if not channel.confirmed.is_set():
                    channel.confirmed.set()
                    self._catch_up(channel)

    def _fan_out(self, name: str, raw: bytes) -> None:
        channel = self._channels.get(name)
        if channel is None:
            return
        try:
            if b"\n" in raw or b"\r" in raw:
                raise MalformedEvent("line break in an event (it would break SSE framing)")
            event = decode_event(raw)
            if event.job_id != channel.job_id:
                raise MalformedEvent(f"an event of job {event.job_id} on this channel")
        except MalformedEvent as exc:
            # No message content may end the reader (its one connection serves every
            # stream): a bad one is counted, and logged at most once per interval.
            self._skip_bad_message(name, exc)
            return
        delivery = frame_of(event)
        self.metrics.events_relayed.inc()
        stray: list[Subscriber] | None = None
        for sub in channel.subscribers:
            if not sub.offer(delivery):
                if stray is None:
                    stray = []
                stray.append(sub)
        if stray is not None:
            self.recheck(channel.job_id, stray)

    def _skip_bad_message(self, name: str, exc: Exception) -> None:
        self.metrics.bad_messages.inc()
        self._bad_messages += 1
        now = time.monotonic()
        if now >= self._bad_logged_at + BAD_MESSAGE_LOG_SECONDS:
            log.warning(
                "skipped %d malformed pub/sub message(s) in %.0f s, latest on %s: %s",
                self._bad_messages, BAD_MESSAGE_LOG_SECONDS, name, exc,
            )  # fmt: skip
            self._bad_logged_at, self._bad_messages = now, 0

    def _catch_up(self, channel: _Channel) -> None:
        """After a (re)subscribe: queue, for every held client, what it missed."""
        held = channel.resync & channel.subscribers
        channel.resync = set()
        self._read_for(channel.job_id, held)

    def recheck(self, job_id: str, subs: list[Subscriber]) -> None:
        """These clients were offered an event that does not follow their last one (or a
        replay of another incarnation): hold the job for them and let its history decide."""
        self.metrics.rechecks.inc()
        for sub in subs:
            sub.hold(job_id)
        self._read_for(job_id, subs)

    def _read_for(self, job_id: str, subs: Iterable[Subscriber]) -> None:
        """One history read per distinct last seq, each in a task that never raises."""
        by_seq: defaultdict[int, list[Subscriber]] = defaultdict(list)
        for sub in subs:
            by_seq[sub.last_seq[job_id]].append(sub)
        for after, group in by_seq.items():
            task = asyncio.create_task(self._catch_up_from(job_id, after, group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _catch_up_from(self, job_id: str, after: int, subs: list[Subscriber]) -> None:
        """A catch-up task: never raises, and leaves no client held (released or closed)."""
        try:
            await self._read_and_deliver(job_id, after, subs)
        except (RedisError, OSError) as exc:
            log.warning("catch-up of job %s failed (%s); clients resume", job_id, exc)
            for sub in subs:
                sub.close("redis")
        except Exception:
            log.exception("catch-up of job %s failed; clients resume", job_id)
            for sub in subs:
                sub.close("error")

    async def _read_and_deliver(self, job_id: str, after: int, subs: list[Subscriber]) -> None:
        keys = self.keyspace.job(job_id)
        try:
            catch_up = await self.reader.events_since(keys, after if after > 0 else None)
        except CorruptState as exc:
            log.warning("job %s: %s %s; its streams end StateLost", job_id, exc, exc.detail)
            for sub in subs:
                _lose(sub, job_id)
            return
        lost = [seen for sub in subs if (seen := self._deliver(sub, job_id, catch_up))]
        if lost:
            await self._report_lost(job_id, lost)

    def _deliver(self, sub: Subscriber, job_id: str, catch_up: CatchUp | None) -> SeenState | None:
        """Release the client with what the history says; if the state it saw is gone,
        with `StateLost`, and return what it saw of that state (to report)."""
        known = sub.epoch[job_id]
        if job_id in sub.finished:
            sub.release(job_id, (), None)
            return None
        if catch_up is None or (known is not None and catch_up.epoch != known):
            seen = None if known is None else SeenState(epoch=known, seq=sub.last_seq[job_id])
            _lose(sub, job_id)
            return seen
        replay = [frame_of(event) for event in catch_up.events]
        if not sub.release(job_id, replay, catch_up.epoch):
            self.recheck(job_id, [sub])
        return None

    async def _report_lost(self, job_id: str, lost: list[SeenState]) -> None:
        """Tell Redis what these clients saw of the lost state: the loss wins for all."""
        seen: dict[int, int] = {}
        for state in lost:
            seen[state.epoch] = max(seen.get(state.epoch, 0), state.seq)
        for epoch, seq in seen.items():
            try:
                await self.publisher.report_lost(job_id, SeenState(epoch=epoch, seq=seq))
            except (RedisError, OSError) as exc:
                log.warning("job %s: its lost state could not be reported: %s", job_id, exc)


def _lose(sub: Subscriber, job_id: str) -> None:
    """End the client's stream of this job with its own `StateLost` (not stored)."""
    last, epoch = sub.last_seq[job_id], sub.epoch[job_id] or 0
    sub.release(job_id, [state_lost(job_id, last, sub.last_attempt[job_id], epoch)], None)


async def _bounded(step: Awaitable[None]) -> None:
    """A handshake or a write on the pub/sub connection, given `HEALTH_SECONDS`."""
    try:
        async with asyncio.timeout(HEALTH_SECONDS):
            await step
    except TimeoutError:
        raise ConnectionError(f"Redis did not answer within {HEALTH_SECONDS}s") from None


def state_lost(job_id: str, last_seq: int, attempt: int, epoch: int) -> Delivery:
    """The `StateLost` failure for one client: seq one past the last it saw, not stored,
    of the epoch it saw (the end of its history, not the start of another)."""
    draft = state_lost_draft(job_id, attempt, round(time.time(), 6))
    return frame_of(decode_event(encode_event(draft, last_seq + 1, attempt, epoch)))
