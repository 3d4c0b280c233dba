"""The subscription hub: ONE Redis pub/sub connection per web process, for every job
(on a Redis Cluster: one per primary, each job's channel on its slot's owner).

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
  `epoch`: protocol/incarnation.py) is not delivered: the history decides
  (`CatchUps.recheck`, streaming/catch_up.py),
  with one read per job and last seq, not per client. A forged seq is thus never sent,
  and a client whose state Redis lost gets `StateLost` at once, however the job's new
  events are numbered. The loss is reported to Redis (`AsyncPublisher.report_lost`), so
  the job ends `StateLost` for every viewer: the loss wins.
- A catch-up never dies unseen: whatever its read raises, each of its clients is
  released (with the replay, or `StateLost` for state it cannot read) or closed.
- A job whose seq went back under a client (a failover's replica missed the last
  writes; a restart from an older file) ends that client's stream `StateLost`: the
  events it saw are gone and the next ones would reuse their seqs.

Cluster mode (`REDIS_URL=redis+cluster://...`, sharded pub/sub, Redis >= 7):
- One `_Link` per primary in use, each a bare connection with its own reader; a job's
  channel is `SSUBSCRIBE`d on the owner of its slot (the hash tag `{job}`), one command
  per channel (one slot per command). The slot map is the hub's own (shards.py).
- Re-route: on `MOVED` or `CLUSTERDOWN`/`TRYAGAIN` in reply to an SSUBSCRIBE, on a
  `sunsubscribe` Redis pushes unasked (the slot migrated, or the primary became a
  replica: it keeps the connection), or on a lost connection, the channel's clients are
  held, the router task refreshes the slot map (once for all the channels displaced, at
  most ten times a second), subscribes the channel on the owner, and the confirmation
  runs the same catch-up as a reconnect: no gap, no repeat. A primary that no longer
  owns slots (failed over) has its connection closed. A map that still names the node
  that gave the slot away is stale (read from a node gossip has not reached yet): the
  router reads it again rather than subscribe there (`STALE_MAP_SECONDS`).
- While the cluster is down (`cluster-allow-pubsubshard-when-down no`) every retry is
  refused with CLUSTERDOWN: ten a second per channel at most (`ROUTE_PAUSE`), and the
  refusals are counted into one log line per `REFUSED_LOG_SECONDS`, not one each.
- Which command an error or a `sunsubscribe` answers is known from the order of the
  link's commands (Redis answers in order): `_Link.sent`.
- The reader's per-message path is the same in both modes: one comparison with the
  link's message kind (`message` or `smessage`), then the fan-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import MovedError, RedisError, ResponseError

from progress_streamer.protocol.event import MalformedEvent, decode_event
from progress_streamer.protocol.history import JobReader
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import AsyncPublisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.web.metrics import Metrics
from progress_streamer.web.streaming.catch_up import CatchUps
from progress_streamer.web.streaming.shards import ShardMap
from progress_streamer.web.streaming.subscriber import Subscriber, frame_of

log = logging.getLogger(__name__)

READ_TIMEOUT = 1.0  # the reader wakes this often to check the connection's health
HEALTH_SECONDS = 5.0  # a PING goes out when Redis was quiet this long
BAD_MESSAGE_LOG_SECONDS = 10.0  # malformed messages are logged at most this often
# CLUSTERDOWN/TRYAGAIN answer every retry (ten a second per channel) while the cluster is
# down: they are counted, and logged at most this often.
REFUSED_LOG_SECONDS = 10.0
BACKOFF_MAX = 2.0
SHARD_BACKOFF_MAX = 0.5  # a primary's connection retries faster: its failover is awaited
ROUTE_PAUSE = 0.1  # at most ten slot-map refreshes a second, however many channels move
CONFIRM_TIMEOUT = 5.0  # a stream waits this long for Redis to confirm its SUBSCRIBE
# A node that gave a channel's slot away is not trusted as its owner again for this long
# on a slot map that still names it: the map was read from a node that has not yet heard
# of the move (gossip), and the old primary, now a replica, would even accept the
# SSUBSCRIBE. Past it, the map wins (the move was undone).
STALE_MAP_SECONDS = 3.0


class HubUnavailable(RuntimeError):
    """Redis did not confirm a subscription in time (it is down or unreachable)."""


class _Tally:
    """A condition that may repeat many times a second, logged at most once per
    `interval`: the first at once, the next ones counted into the following line."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.count = 0
        self.logged_at = float("-inf")

    def due(self) -> int:
        """Count one; return the count to log now, or 0 within the interval."""
        self.count += 1
        now = time.monotonic()
        if now < self.logged_at + self.interval:
            return 0
        count, self.count, self.logged_at = self.count, 0, now
        return count


class _Link:
    """One pub/sub connection and its reader task: the hub's only one (standalone mode),
    or the one to a cluster primary (sharded pub/sub, one per primary in use)."""

    def __init__(self, node: str, make: Callable[[], Connection], *, sharded: bool) -> None:
        self.node = node  # host:port, for logs and metrics
        self.make = make
        self.sharded = sharded
        self.message = b"smessage" if sharded else b"message"
        self.confirm = b"ssubscribe" if sharded else b"subscribe"
        self.subscribe = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self.unsubscribe = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self.conn: Connection | None = None
        self.connected = asyncio.Event()
        self.acks: defaultdict[str, int] = defaultdict(int)  # SUBSCRIBEs awaiting reply
        # Cluster: the commands awaiting a reply, in order (Redis answers in order), so
        # an error (MOVED, CLUSTERDOWN, TRYAGAIN) is known to be about which channel, and
        # a `sunsubscribe` pushed by Redis is told apart from the answer to ours.
        self.sent: deque[tuple[bytes, str]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.retired = False  # no longer a primary: its task ends


@dataclass(eq=False)
class _Channel:
    job_id: str
    subscribers: set[Subscriber] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    resync: set[Subscriber] = field(default_factory=set)  # to catch up after a reconnect
    link: _Link | None = None  # where it is subscribed; None while being (re-)routed
    left: str | None = None  # the node that gave its slot away (a push or MOVED)
    left_at: float = 0.0  # when, on the loop's clock


class SubscriptionHub:
    """Ref-counted channel subscriptions over one connection per Redis primary (one in
    standalone mode), each with one reader task."""

    def __init__(
        self,
        settings: Settings,
        reader: JobReader,
        publisher: AsyncPublisher,
        metrics: Metrics,
        *,
        client_name: str,
        cluster: RedisCluster | None = None,
    ) -> None:
        self.settings = settings
        self.keyspace = KeySpace(settings.key_prefix)
        self.reader = reader
        self.publisher = publisher  # reports lost states (the loss wins)
        self.metrics = metrics
        self._channels: dict[str, _Channel] = {}
        self._links: dict[str, _Link] = {}
        self._pool: ConnectionPool | None = None
        # Cluster mode: the slot map, the channels waiting for a route, and the router's
        # wake-up (shards.py).
        self._shards = None if cluster is None else ShardMap(cluster, client_name=client_name)
        self._unrouted: set[str] = set()
        self._route_wanted = asyncio.Event()
        if self._shards is None:
            # No socket timeout: redis-py would arm a timer around every read, i.e. per
            # event. The reader keeps one timer for all its reads (`_read_forever`), and
            # the handshake and writes get `HEALTH_SECONDS` each (`_bounded`), so a
            # reconnect over a silently dead path cannot hang for good.
            self._pool = ConnectionPool.from_url(
                settings.redis_url, client_name=client_name, socket_connect_timeout=2.0
            )
            kwargs = self._pool.connection_kwargs
            node = str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")
            link = _Link(node, self._pool.make_connection, sharded=False)
            self._links[node] = link
        self._task: asyncio.Task[None] | None = None  # the reader (standalone), the router
        self.catch_ups = CatchUps(self.keyspace, reader, publisher, metrics, cluster=bool(cluster))
        self._closing = False
        self._bad_messages = _Tally(BAD_MESSAGE_LOG_SECONDS)
        self._not_now = _Tally(REFUSED_LOG_SECONDS)  # CLUSTERDOWN, TRYAGAIN

    @property
    def watched_jobs(self) -> int:
        return len(self._channels)

    def subscribers(self) -> list[Subscriber]:
        return list({s for ch in self._channels.values() for s in ch.subscribers})

    async def start(self) -> None:
        if self._shards is None:
            (link,) = self._links.values()
            self._task = self._start(link)
        else:
            self._task = asyncio.create_task(self._route_forever(), name="subscription-router")
            self._route_wanted.set()  # read the slot map once at start

    def _start(self, link: _Link) -> asyncio.Task[None]:
        link.task = asyncio.create_task(self._run(link), name=f"subscription-hub {link.node}")
        return link.task

    async def close(self) -> None:
        self._closing = True
        for sub in self.subscribers():
            sub.close("shutdown")
        tasks = [t for t in (self._task, *(link.task for link in self._links.values())) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.catch_ups.cancel()
        for link in self._links.values():
            if link.conn is not None:
                await link.conn.disconnect()
        if self._pool is not None:
            await self._pool.disconnect()
        if self._shards is not None:
            await self._shards.close()

    async def subscribe(self, sub: Subscriber, job_id: str) -> None:
        """Add the client to the job's channel; return once Redis confirmed it."""
        name = self.keyspace.job(job_id).channel
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(job_id)
            channel.subscribers.add(sub)
            await self._place(name, channel)
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
            self._unrouted.discard(name)
            if channel.link is not None:
                await self._send(channel.link, channel.link.unsubscribe, name)

    async def _place(self, name: str, channel: _Channel) -> None:
        """Subscribe the channel on its link: the one connection, or its slot's owner's
        (created on first use). A slot the map does not cover waits for the router."""
        if self._shards is None:
            (link,) = self._links.values()
        else:
            node = self._shards.owner(name)
            if node is None:
                self._unrouted.add(name)
                self._route_wanted.set()
                return
            link = self._links.get(node.name)  # type: ignore[assignment]
            if link is None:
                link = self._links[node.name] = _Link(
                    node.name, functools.partial(self._shards.connection_to, node), sharded=True
                )
                self._start(link)
        channel.link = link
        await self._send_subscribe(link, name)

    async def _send_subscribe(self, link: _Link, name: str) -> None:
        link.acks[name] += 1  # before the write: the reply may be read while it drains
        if not await self._send(link, link.subscribe, name):
            link.acks.pop(name, None)  # the reconnect subscribes it

    async def _send(self, link: _Link, *args: str) -> bool:
        """Write a command if connected; a reconnect re-subscribes whatever is needed."""
        conn = link.conn
        if conn is None or not link.connected.is_set():
            return False
        if link.sharded:
            link.sent.append((args[0].lower().encode(), args[1] if len(args) > 1 else ""))
        try:
            await _bounded(conn.send_command(*args, check_health=False))
        except (RedisError, OSError) as exc:
            log.warning("pub/sub write to %s failed: %s", link.node, exc)
            await conn.disconnect(nowait=True)  # the reader sees it and reconnects
            return False
        return True

    async def _run(self, link: _Link) -> None:
        backoff = 0.05
        limit = SHARD_BACKOFF_MAX if link.sharded else BACKOFF_MAX
        try:
            while not self._closing and not link.retired:
                try:
                    await self._connect(link)
                    backoff = 0.05
                    await self._read_forever(link)
                except (RedisError, OSError) as exc:
                    if self._closing:
                        return
                    await self._lost_connection(link, exc)
                except Exception as exc:  # never let a reader die: log, reconnect
                    log.exception("pub/sub reader of %s failed; reconnecting", link.node)
                    await self._lost_connection(link, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, limit)
        finally:
            if link.retired and link.conn is not None:
                await link.conn.disconnect(nowait=True)

    async def _lost_connection(self, link: _Link, exc: BaseException) -> None:
        if link.connected.is_set():
            log.warning("pub/sub connection to %s lost (%s); reconnecting", link.node, exc)
            self.metrics.redis_reconnects.inc()
            self.metrics.pubsub_connections.labels(link.node).set(0)
        link.connected.clear()
        if link.conn is not None:
            with contextlib.suppress(Exception):
                await link.conn.disconnect(nowait=True)
        link.conn = None
        link.acks.clear()
        link.sent.clear()
        if not link.sharded:
            for channel in self._channels.values():
                channel.confirmed.clear()
            return
        # The primary may be restarting, or gone for good (its replica takes over): its
        # channels go back to the router, which asks the slot map where they live now.
        for name, channel in self._channels.items():
            if channel.link is link:
                self._reroute(name, channel, link)

    async def _connect(self, link: _Link) -> None:
        conn = link.make()
        try:
            await _bounded(conn.connect())  # type: ignore[no-untyped-call]
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        link.conn = conn
        link.connected.set()
        self.metrics.pubsub_connections.labels(link.node).set(1)
        if link.sharded:
            # Its channels' clients are held since they were re-routed (`_reroute`); one
            # SSUBSCRIBE per channel (one slot per command), all in one write.
            names = [name for name, ch in self._channels.items() if ch.link is link]
            for name in names:
                link.acks[name] += 1
                link.sent.append((link.confirm, name))
            if names:
                packed = conn.pack_commands([(link.subscribe, name) for name in names])
                await _bounded(conn.send_packed_command(packed, check_health=False))
            return
        names = list(self._channels)
        # Live events of every current client wait until its catch-up is queued.
        for channel in self._channels.values():
            _hold_for_catch_up(channel)
        if names:
            for name in names:
                link.acks[name] += 1
            await _bounded(conn.send_command("SUBSCRIBE", *names, check_health=False))

    async def _read_forever(self, link: _Link) -> None:
        conn = link.conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        pinged = False
        message, fan_out, control = link.message, self._fan_out, self._control
        while True:
            try:
                # One timer for every read: moved forward at most twice a second, not
                # armed and cancelled around each message.
                async with asyncio.timeout(READ_TIMEOUT) as window:
                    while True:
                        reply = await conn.read_response(disconnect_on_error=False)
                        quiet_since, pinged = loop.time(), False
                        if reply[0] == message:  # the hot path: one comparison
                            fan_out(reply[1].decode(), reply[2])
                        else:
                            control(link, reply)
                        if window.when() - quiet_since < READ_TIMEOUT / 2:  # type: ignore[operator]
                            window.reschedule(quiet_since + READ_TIMEOUT)
            except TimeoutError:
                pass  # nothing for READ_TIMEOUT: check the connection's health
            except ResponseError as exc:
                if not link.sharded:
                    raise
                self._refused(link, exc)  # an error reply: about one channel
                continue
            now = loop.time()
            if now - quiet_since > 2 * HEALTH_SECONDS and pinged:
                raise ConnectionError("Redis did not answer a PING on the pub/sub connection")
            if now - quiet_since > HEALTH_SECONDS and not pinged:
                if link.sharded:
                    link.sent.append((b"pong", ""))
                await _bounded(conn.send_command("PING", check_health=False))
                pinged = True

    def _control(self, link: _Link, reply: Any) -> None:
        """Every reply but a message: confirmations, PONG, and in cluster mode the
        `sunsubscribe` a primary pushes when the channel's slot left it."""
        kind = reply[0] if isinstance(reply, list) else b"pong"  # PONG unsubscribed
        if kind == link.confirm:
            name = reply[1].decode()
            if link.sharded:
                self._answered(link, kind, name)
            self._confirmed(link, name)
        elif link.sharded:
            name = reply[1].decode() if kind == b"sunsubscribe" else ""
            if not self._answered(link, kind, name) and kind == b"sunsubscribe":
                channel = self._channels.get(name)
                if channel is not None and channel.link is link:
                    # Unrequested: the slot migrated, or this primary became a replica.
                    self._reroute(name, channel, link, gave_away=True)

    @staticmethod
    def _answered(link: _Link, kind: bytes, name: str) -> bool:
        """The reply answers the oldest command sent (else it is pushed by Redis)."""
        if link.sent and link.sent[0] == (kind, name):
            link.sent.popleft()
            return True
        return False

    def _confirmed(self, link: _Link, name: str) -> None:
        link.acks[name] -= 1
        if link.acks[name] > 0:
            return
        link.acks.pop(name, None)
        channel = self._channels.get(name)
        if channel is not None and channel.link is link and not channel.confirmed.is_set():
            channel.confirmed.set()
            self._catch_up(channel)

    def _refused(self, link: _Link, exc: ResponseError) -> None:
        """An error reply in cluster mode. To an SSUBSCRIBE (MOVED: the slot is served
        elsewhere; CLUSTERDOWN, TRYAGAIN: not now), the channel is routed again."""
        kind, name = link.sent.popleft() if link.sent else (b"", "")
        if kind != link.confirm:
            log.warning("pub/sub command refused by %s: %s", link.node, exc)
            return
        link.acks[name] -= 1
        if link.acks[name] <= 0:
            link.acks.pop(name, None)
        channel = self._channels.get(name)
        if channel is None or channel.link is not link:
            return
        self._log_refusal(name, link, exc)
        self._reroute(name, channel, link, gave_away=isinstance(exc, MovedError))

    def _log_refusal(self, name: str, link: _Link, exc: ResponseError) -> None:
        """Each MOVED (a move: rare); CLUSTERDOWN/TRYAGAIN counted, as every retry gets
        one while the cluster is down (ten a second per channel)."""
        why = f"{type(exc).__name__}: {exc}"  # MovedError's text is the slot and node
        if isinstance(exc, MovedError):
            log.info("SSUBSCRIBE %s refused by %s (%s); re-routing", name, link.node, why)
        elif count := self._not_now.due():
            log.warning(
                "SSUBSCRIBE refused %d time(s) in %.0f s (%s), latest %s by %s; retrying",
                count, REFUSED_LOG_SECONDS, why, name, link.node,
            )  # fmt: skip

    def _reroute(
        self, name: str, channel: _Channel, old: _Link, *, gave_away: bool = False
    ) -> None:
        """Hold the channel's clients and hand it to the router, which refreshes the slot
        map and subscribes it on the owner; its confirmation runs the catch-up from the
        history that releases them (`_catch_up`): no gap, and seq drops the repeats.
        `gave_away`: the node said it no longer serves the slot (not merely unreachable)."""
        old.acks.pop(name, None)
        channel.link = None
        if gave_away:
            channel.left, channel.left_at = old.node, time.monotonic()
        if channel.confirmed.is_set():
            channel.confirmed.clear()
            _hold_for_catch_up(channel)
            self.metrics.reroutes.labels(old.node).inc()
        self._unrouted.add(name)
        self._route_wanted.set()

    async def _route_forever(self) -> None:
        """Cluster mode: whenever channels wait for a route, refresh the slot map and
        subscribe each on its owner (one refresh for all the channels a move displaced)."""
        assert self._shards is not None
        while not self._closing:
            await self._route_wanted.wait()
            self._route_wanted.clear()
            try:
                await self._shards.refresh()
            except Exception as exc:  # the cluster is unreachable: retry, never die
                log.warning("cluster slot map refresh failed (%s); retrying", exc)
                self._route_wanted.set()
                await asyncio.sleep(SHARD_BACKOFF_MAX)
                continue
            self._retire_links(self._shards.primaries())
            names, self._unrouted = self._unrouted, set()
            for name in names:
                channel = self._channels.get(name)
                if channel is None or channel.link is not None:
                    continue
                if self._map_is_stale(name, channel):
                    self._unrouted.add(name)  # read the map again after the pause
                    self._route_wanted.set()
                    continue
                channel.left = None
                await self._place(name, channel)
            await asyncio.sleep(ROUTE_PAUSE)

    def _map_is_stale(self, name: str, channel: _Channel) -> bool:
        """The map still names, as the channel's owner, the node that just gave it away."""
        assert self._shards is not None
        if channel.left is None or time.monotonic() - channel.left_at > STALE_MAP_SECONDS:
            return False
        owner = self._shards.owner(name)
        return owner is not None and owner.name == channel.left

    def _retire_links(self, primaries: set[str]) -> None:
        """Close the connections to nodes that are no longer primaries (failed over)."""
        for node, link in list(self._links.items()):
            if node in primaries:
                continue
            log.info("%s is no longer a primary; its pub/sub connection closes", node)
            link.retired = True
            del self._links[node]
            with contextlib.suppress(KeyError):  # never connected: no gauge yet
                self.metrics.pubsub_connections.remove(node)
            for name, channel in self._channels.items():
                if channel.link is link:
                    self._reroute(name, channel, link)
            if link.task is not None:
                link.task.cancel()

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
            self.catch_ups.recheck(channel.job_id, stray)

    def _skip_bad_message(self, name: str, exc: Exception) -> None:
        self.metrics.bad_messages.inc()
        if count := self._bad_messages.due():
            log.warning(
                "skipped %d malformed pub/sub message(s) in %.0f s, latest on %s: %s",
                count, BAD_MESSAGE_LOG_SECONDS, name, exc,
            )  # fmt: skip

    def _catch_up(self, channel: _Channel) -> None:
        """After a (re)subscribe: queue, for every held client, what it missed."""
        held = channel.resync & channel.subscribers
        channel.resync = set()
        self.catch_ups.read_for(channel.job_id, held)


def _hold_for_catch_up(channel: _Channel) -> None:
    """Before a re-subscribe: hold the channel's clients for the catch-up its confirmation
    runs. A client held by someone else (its stream still opening, or a catch-up read
    under way) stays theirs: `hold` makes their release read the history once more, as
    their replay may predate the events this re-subscribe missed."""
    job_id, resync = channel.job_id, channel.resync
    channel.resync = {sub for sub in channel.subscribers if sub in resync or sub.hold(job_id)}


async def _bounded(step: Awaitable[None]) -> None:
    """A handshake or a write on the pub/sub connection, given `HEALTH_SECONDS`."""
    try:
        async with asyncio.timeout(HEALTH_SECONDS):
            await step
    except TimeoutError:
        raise ConnectionError(f"Redis did not answer within {HEALTH_SECONDS}s") from None
