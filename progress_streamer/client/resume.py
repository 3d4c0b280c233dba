"""Following a stream across drops: the one state machine both clients drive.

The sync and asyncio clients only do I/O; this decides what to send and what an answer
means. SPEC.md's rules, from the client side:

- the opening `retry:` frame and `: ping` comments are not events (httpx-sse hands a
  ping after an event back as an empty event: skipped), and `retry:` is honoured;
- after a drop, reconnect with the last id seen (`Last-Event-ID`): no gap, no repeat (an
  event at or before the last id is skipped, whatever the server sends);
- stop after the terminal event (of every job, for a watch), and on `204`;
- `401`/`403`/`404` raise at once; `429`/`5xx` and network errors are retried after the
  server's `Retry-After` or `retry:` delay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from progress_streamer.client.errors import Unreachable, error_of
from progress_streamer.protocol.event import ProgressEvent, decode_event

DEFAULT_RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 30.0
MAX_FAILURES = 10  # tries in a row without an event before giving up (`Unreachable`)


class StreamEnded(Exception):
    """The stream is over: the terminal event was seen, or the server said `204`."""


@dataclass
class Resume:
    """Where a client is in one job's stream, or a watch's (`job_ids` then set)."""

    job_ids: tuple[str, ...] = ()
    last_id: str | None = None
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    seqs: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    failures: int = 0
    last_problem: str = ""
    deadline: float | None = None  # `time.monotonic()` past which `wait` gives up

    def remaining(self) -> float | None:
        """Seconds left before the deadline (`TimeoutError` once past it), or None."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the job did not finish in time")
        return left

    def failed(self, problem: str) -> None:
        """A try ended without the stream's end: count it, give up past `MAX_FAILURES`."""
        self.failures += 1
        self.last_problem = problem
        if self.failures >= MAX_FAILURES:
            raise Unreachable(0, "unreachable", f"{self.failures} tries in a row: {problem}")

    def headers(self) -> dict[str, str]:
        resume = {"Last-Event-ID": self.last_id} if self.last_id else {}
        return {"Accept": "text/event-stream", **resume}

    def check(self, status: int, body: object, retry_after: str | None) -> None:
        """Raise `StreamEnded` on 204, the matching error on 4xx; note a retry delay."""
        if status == 204:
            raise StreamEnded()
        if status in (401, 403, 404, 409, 400, 422):
            raise error_of(status, body)
        if retry_after and retry_after.isdigit():
            self.retry_seconds = min(float(retry_after), MAX_RETRY_SECONDS)

    def accept(self, data: str, event_id: str | None, retry_ms: int | None) -> ProgressEvent | None:
        """The event in a frame, or None for what is not one (or was already seen)."""
        if retry_ms is not None:
            self.retry_seconds = min(retry_ms / 1000, MAX_RETRY_SECONDS)
        if not data:
            return None
        event = decode_event(data)
        self.failures = 0
        if event.seq <= self.seqs.get(event.job_id, 0):
            return None  # seen before a reconnect: never repeated
        self.seqs[event.job_id] = event.seq
        if event_id:
            self.last_id = event_id
        if event.is_terminal:
            self.finished.add(event.job_id)
        return event

    @property
    def over(self) -> bool:
        """Every followed job sent its terminal event."""
        wanted = set(self.job_ids) if self.job_ids else set(self.seqs)
        return bool(wanted) and wanted <= self.finished


def read_timeout(resume: Resume) -> httpx.Timeout:
    """Reads never time out while following (pings keep a stream alive), except that
    `wait(timeout=...)` bounds them by what is left of its time."""
    return httpx.Timeout(30.0, read=resume.remaining())
