"""State identity: which incarnation of a job's state an event, a publisher or a stream
belongs to, and what happens when Redis loses that state (a restart without persistence).

The publish script gives a job's state an `epoch` when it creates it (Redis time in
microseconds: unique per creation, and unlike a counter it does not restart from zero
with an emptied Redis) and glues it into every event, beside `seq`. Whoever saw an
incarnation can tell when it is gone:

- a worker's running attempt (Celery and ARQ) passes the `SeenState` of its last
  accepted event with each publish; on Celery, a task message carries the one of its
  `pending` event to the worker's `started`;
- a web process's stream knows the epoch of what it sent; the hub compares it, per
  delivery, with each live event's (one integer comparison), and reads the history when
  they differ.

The loss wins (docs/api.md, "Lost state: the loss wins"): once a job's state vanished under
someone who saw it, the job ends `failure`/`StateLost` for everybody. Open streams get
that event at once (sent to each client only, `seq` one past its own last); the job
answers 404 until something publishes into it again; that publish is refused and the
script stores the `StateLost` failure in its place, numbered past every seq known lost,
so the status endpoint, new streams and resumed ones all tell the same outcome, and the
job's later events are refused (`terminal`), like after `WorkerLost`. A job recreated
meanwhile by a publisher that never saw the lost state ends `StateLost` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from progress_streamer.protocol.event import ErrorInfo, EventDraft
from progress_streamer.protocol.status import JobStatus

STATE_LOST = ErrorInfo(type="StateLost", message="Redis lost the state of this job")

# The Celery task message header carrying the `SeenState` of the job's `pending` event.
SEEN_HEADER = "progress_seen"


@dataclass(frozen=True, slots=True, kw_only=True)
class SeenState:
    """What a publisher or a stream saw of a job's state: its epoch, and the last seq."""

    epoch: int
    seq: int

    def as_text(self) -> str:
        return f"{self.epoch}:{self.seq}"

    @classmethod
    def from_text(cls, text: object) -> SeenState | None:
        """`as_text`'s output back, or None for anything else (a header is untrusted)."""
        if not isinstance(text, str):
            return None
        epoch, _, seq = text.partition(":")
        if not (epoch.isascii() and epoch.isdigit() and seq.isascii() and seq.isdigit()):
            return None
        if len(epoch) > 16 or len(seq) > 16:
            return None
        return cls(epoch=int(epoch), seq=int(seq))


def state_lost_draft(job_id: str, attempt: int | None, ts: float = 0.0) -> EventDraft:
    """The `StateLost` failure of a job (the hub's, per client, and the script's, stored)."""
    return EventDraft(
        job_id=job_id, status=JobStatus.FAILURE, attempt=attempt, error=STATE_LOST, ts=ts
    )


def state_lost_tail_prefix() -> str:
    """The `StateLost` event's JSON after `"attempt":A,` and up to its `ts` value, as the
    publish script writes it (it appends the Redis time and `}`): the same bytes as the
    event `state_lost_draft` encodes, defined once."""
    _, tail = state_lost_draft("x", None).encode(1 << 20)
    text = tail.decode()
    assert text.endswith('"ts":0.0}')
    return text[: -len("0.0}")]
