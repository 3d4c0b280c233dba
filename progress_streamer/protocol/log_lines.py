"""Live log lines of a job (`self.log(...)`): bounded per job, never silently lost.

A log line is an event of its own on the job's stream (the field `log`, the status
unchanged), kept in the history and replayed like any event; it is never coalesced.
A task printing in a tight loop must not flood Redis and every browser, so each attempt
may send `PROGRESS_LOG_LINES_PER_SECOND` lines per second (bursts of as many); the
excess is counted, and reported as one "N log lines dropped" line before the next line
that gets through, or when the attempt ends.
"""

from __future__ import annotations

from time import monotonic

MAX_LINE_CHARS = 2000


class LogLines:
    """The bound of one attempt: a token bucket and the count of lines dropped."""

    __slots__ = ("_last", "_tokens", "dropped", "per_second")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._tokens = float(per_second)
        self._last = monotonic()
        self.dropped = 0

    def admit(self, text: object) -> list[str]:
        """The lines to send now for `text`: none (dropped, counted), the line, or a
        "dropped" notice then the line. `TypeError` if `text` is not a string."""
        if not isinstance(text, str):
            raise TypeError(f"a log line must be a string, not {type(text).__name__}")
        now = monotonic()
        self._tokens = min(self.per_second, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        if self._tokens < 1:
            self.dropped += 1
            return []
        self._tokens -= 1
        line = text if len(text) <= MAX_LINE_CHARS else text[: MAX_LINE_CHARS - 3] + "..."
        return [*self.take_dropped(), line]

    def take_dropped(self) -> list[str]:
        """The "dropped" notice owed, if any (sent before the next line, or at the end)."""
        if not self.dropped:
            return []
        notice = f"{self.dropped} log line{'s' if self.dropped > 1 else ''} dropped"
        self.dropped = 0
        return [notice]
