"""One client's end of the hub: a bounded queue of frames for the jobs it watches.

The hub offers every live event to each subscriber of the job; the stream writer takes
them out in order. Owned by `streaming/hub.py`, read by `streaming/response.py`.

Rules kept here (SPEC.md, "The event stream"):
- per job, a frame is queued only if its `seq` is past the last one queued (no repeats);
- a live event is taken only if it follows: its `seq` at most one past the last one and
  its `epoch` the one the replay came from. Anything else (a gap, a forged seq, another
  incarnation of the job's state) is refused, and the hub reads the history, which
  decides (`hub.py`): two comparisons per delivery, a Redis read only for the odd one;
- while a job is being replayed (`hold`), live events wait (at most `capacity` of them:
  beyond, the client is closed and resumes), then follow the replay;
- when the queue is full, a `progress` event replaces the job's queued `progress`
  (latest wins); any other event is queued past the bound (never dropped), so the queue
  overshoots by at most the handful of status changes a job can have;
- while the client keeps up (its writer parked on an empty queue), a frame is written
  straight to its socket by the `Sink` (`streaming/direct_writer.py`) instead of queued, so a
  delivery wakes no task; whatever the sink refuses is queued, behind nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from progress_streamer.protocol.event import ProgressEvent
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.streaming.frames import PING, data_part, id_line

_now = time.monotonic  # a write stamps its stream: one C call, no attribute lookups


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event and its SSE frame, encoded once for all its clients (`frames.py`)."""

    event: ProgressEvent
    frame: bytes  # `id: <seq>` + `data`: what a job stream sends
    data: bytes  # the `data:` part alone, which a watch stream puts after its cursor


def frame_of(event: ProgressEvent) -> Delivery:
    data = data_part(event.raw)
    return Delivery(event, id_line(event.seq) + data, data)


class Sink(Protocol):
    @property
    def gone(self) -> bool:
        """The client left (the keep-alive sweep then ends the stream)."""
        ...

    def when_gone(self, callback: Callable[[], object]) -> bool:
        """Call back once when the client leaves, and say True; False if this sink
        cannot tell (the keep-alive sweep then polls `gone`)."""
        ...

    def write(self, body: bytes) -> bool:
        """Write now and say True, or write nothing and say False."""
        ...


class Subscriber:
    """A client's queue, its last seq per job and why it ended (if it did)."""

    def __init__(
        self,
        job_ids: Sequence[str],
        *,
        capacity: int,
        lifetime: float,
        client: str = "",
        cursor: Sequence[int | None] | None = None,
        on_coalesce: Callable[[], object] | None = None,
    ) -> None:
        self.job_ids = tuple(job_ids)
        self.client = client
        self.capacity = capacity
        self.last_seq: dict[str, int] = dict.fromkeys(job_ids, 0)
        self.last_attempt: dict[str, int] = dict.fromkeys(job_ids, 1)
        # The incarnation of each job's state this client's events come from (None until
        # its replay says): protocol/incarnation.py.
        self.epoch: dict[str, int | None] = dict.fromkeys(job_ids)
        self.finished: set[str] = set()  # jobs whose terminal event is queued
        self.coalesced = 0
        self._on_coalesce = on_coalesce  # e.g. the process's metric; only on this rare path
        self.closed: str | None = None  # why the stream ends early: shutdown, lifetime...
        self.ping_due = False
        self.last_write = time.monotonic()  # when a frame last went out (keep-alive)
        self.last_check = self.last_write  # the keep-alive's last ping check
        self.ping_at = 0.0  # the keep-alive's next ping check (time.monotonic())
        self.sweep_slot: int | None = None  # the keep-alive's polled set, while polled
        self.due_slot: int | None = None  # the keep-alive's bucket of its next check
        self.gone_told = False  # its sink tells when the client leaves (no polling)
        # A jittered lifetime, so a deploy does not make every client resume at once.
        self.deadline = time.monotonic() + lifetime * (1 - 0.2 * random.random())
        # A watch's `id:` is the cursor of the last seq written per job (`12.0.7`).
        self.cursor: dict[str, int] | None = None
        if cursor is not None:
            self.cursor = {job: seq or 0 for job, seq in zip(self.job_ids, cursor, strict=True)}
        self.sink: Sink | None = None  # set by the writer once the stream has started
        # Lean on purpose (10,000 of these per process): a list, not a deque (an empty
        # deque is 760 bytes), and one future while the writer waits, not an Event.
        self._queue: list[Delivery] = []
        self._held: dict[str, list[Delivery]] = {}
        self._reread: set[str] | None = None  # held jobs asked to hold again (rare: lazy)
        self._waiter: asyncio.Future[None] | None = None  # the writer, parked on no frames

    @property
    def queued(self) -> int:
        """Frames waiting for the client's task (a backlog: the socket was not writable)."""
        return len(self._queue)

    @property
    def all_finished(self) -> bool:
        return len(self.finished) == len(self.job_ids)

    def hold(self, job_id: str) -> bool:
        """Keep live events of the job aside until `release` (a replay is on its way).

        False when the job is held already (a stream still opening, or a catch-up under
        way, when the hub re-subscribes): the holder alone releases it, so that one replay
        is taken, not two read at different moments; but that replay may have been read
        before this hold's cause (a reconnect that missed events), so its `release` then
        says False and the history is read once more."""
        if job_id in self._held:
            if self._reread is None:
                self._reread = set()
            self._reread.add(job_id)
            return False
        self._held[job_id] = []
        return True

    def release(self, job_id: str, replay: Iterable[Delivery], epoch: int | None) -> bool:
        """Queue the replay, read from Redis (so it is taken as it is) from the incarnation
        `epoch` (None: no change), then the live events that came meanwhile, as `offer`
        takes them. False when one of those does not follow, the replay is of another
        incarnation than this client's, or the job was held again meanwhile (`hold`): the
        hub then reads the history again."""
        held = self._held.pop(job_id, [])
        reread = self._reread is not None and job_id in self._reread
        if reread:
            self._reread.discard(job_id)  # type: ignore[union-attr]
        if epoch is not None:
            known = self.epoch[job_id]
            if known is not None and known != epoch:
                return False
            self.epoch[job_id] = epoch
        for delivery in replay:
            self._push(delivery)
        followed = all(self.offer(delivery) for delivery in held)
        return followed and not reread

    def offer(self, delivery: Delivery) -> bool:
        """Take a live event, or say False: it does not follow this client's last event of
        its job (a gap in seq, or another epoch), so it is not delivered and the hub reads
        the history, which decides."""
        event = delivery.event
        job_id = event.job_id
        held = self._held.get(job_id)
        if held is not None:
            if len(held) < self.capacity:
                held.append(delivery)
            else:  # the replay is late: never grow without bound; the client resumes
                self.close("lagging")
            return True
        if event.epoch == self.epoch.get(job_id) and event.seq <= self.last_seq[job_id] + 1:
            self._push(delivery)
            return True
        # Nothing to check for a job finished here, or not watched by this client.
        return job_id in self.finished or job_id not in self.epoch

    def _push(self, delivery: Delivery) -> None:
        # Runs for every delivery (the fan-out's inner loop): attribute reads kept few.
        event = delivery.event
        job_id, seq = event.job_id, event.seq
        if seq <= self.last_seq.get(job_id, seq) or job_id in self.finished:
            return
        self.last_seq[job_id] = seq
        self.last_attempt[job_id] = event.attempt
        terminal = event.is_terminal
        if terminal:
            self.finished.add(job_id)
        elif len(self._queue) >= self.capacity and self._coalesce(delivery):
            return
        sink = self._direct_sink()
        if sink is not None:
            frame = delivery.frame if self.cursor is None else self.frame(delivery)
            if sink.write(frame):
                self.last_write = _now()
                if terminal:
                    self._wake()  # the writer ends the response
                return
        self._queue.append(delivery)
        self._wake()

    def _direct_sink(self) -> Sink | None:
        """The sink, if the writer is parked on an empty queue (nothing waits to go first)."""
        if self._waiter is None or self.closed is not None or self._queue:
            return None
        return self.sink

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def frame(self, delivery: Delivery) -> bytes:
        """The bytes for this client: the hub's frame, or for a watch, with the cursor."""
        if self.cursor is None:
            return delivery.frame
        event = delivery.event
        self.cursor[event.job_id] = event.seq
        cursor = ".".join([str(self.cursor[job_id]) for job_id in self.job_ids])
        return id_line(cursor) + delivery.data

    def _coalesce(self, delivery: Delivery) -> bool:
        """Replace the job's last queued event with this one if both are `progress`."""
        if delivery.event.status is not JobStatus.PROGRESS:
            return False
        for index in range(len(self._queue) - 1, -1, -1):
            queued = self._queue[index].event
            if queued.job_id == delivery.event.job_id:
                if queued.status is not JobStatus.PROGRESS:
                    return False
                self._queue[index] = delivery
                self.coalesced += 1
                if self._on_coalesce is not None:
                    self._on_coalesce()
                return True
        return False

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._wake()

    def request_ping(self) -> None:
        sink = self._direct_sink()
        if sink is not None and sink.write(PING):
            return
        self.ping_due = True
        self._wake()

    @property
    def ended(self) -> bool:
        """Closed early, or every job's terminal event has been taken out."""
        return self.closed is not None or (self.all_finished and not self._queue)

    async def next(self) -> list[Delivery] | None:
        """Every queued frame, in order (one write for all of them); None when a ping is
        due or the stream must end. Taking the whole queue at once means a client that
        fell behind catches up in one write instead of one write per event."""
        while True:
            if self.closed is not None:
                return None  # the client resumes with its last event id
            if self._queue:
                batch, self._queue = self._queue, []
                return batch
            if self.ping_due or self.all_finished:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
