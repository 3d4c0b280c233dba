"""Progress coalescing: a task may report a million times; Redis sees a few per second.

`ProgressThrottle` (threads; Celery) and `AsyncProgressThrottle` (asyncio; ARQ) decide
per call, before any event is built, whether to send now or keep only the latest value.
Sent at once: the first report, every change of `step`. Coalesced: reports closer than
the interval to the last send; the latest one is flushed by a timer, and always before
the next status change (`flush()`), so a quiet task still shows its last value.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from time import monotonic  # a global, not an attribute: the hot path reads it per call
from typing import Any

from progress_streamer.protocol.event import Report

log = logging.getLogger(__name__)

_NEVER = float("-inf")
_UNSET = object()


class ProgressThrottle:
    """Thread-safe coalescing in front of a synchronous `send(report)`."""

    def __init__(self, send: Callable[[Report], object], interval_ms: int) -> None:
        self._send = send
        self._interval = interval_ms / 1000
        self._lock = threading.Lock()
        self._coalesce_until = _NEVER  # the last send plus the interval
        self._last_step: object = _UNSET
        self._pending: tuple[Any, ...] | None = None  # a Report's fields, not yet a Report
        self._timer: threading.Timer | None = None
        self._deferred_error: Exception | None = None

    def report(
        self,
        step: str | None = None,
        percent: float | None = None,
        current: int | None = None,
        total: int | None = None,
        message: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        now = monotonic()
        if now < self._coalesce_until and step == self._last_step:
            # The hot path takes no lock: under the GIL, storing the tuple is atomic and
            # `_on_timer` clears `_timer` before it takes `_pending`, so a value stored
            # here is either taken by a running timer or starts a new one.
            self._pending = (step, percent, current, total, message, data)
            if self._timer is None:
                with self._lock:
                    if self._timer is None and self._pending is not None:
                        self._start_timer(self._coalesce_until - now)
            if self._deferred_error is not None:
                self._raise_deferred()
            return
        with self._lock:
            if self._deferred_error is not None:
                self._raise_deferred()
            self._pending = None
            self._coalesce_until, self._last_step = now + self._interval, step
            self._send(Report(step, percent, current, total, message, data))

    def _raise_deferred(self) -> None:
        error, self._deferred_error = self._deferred_error, None
        if error is not None:
            raise error

    def flush(self) -> None:
        """Send the coalesced latest value now (before a status change or at the end)."""
        with self._lock:
            self._cancel_timer()
            self._flush_locked()

    def close(self) -> None:
        """Drop what is pending without sending it (the attempt is over)."""
        with self._lock:
            self._cancel_timer()
            self._pending = None

    def _flush_locked(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._coalesce_until = monotonic() + self._interval
            self._last_step = pending[0]
            self._send(Report._make(pending))

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            try:
                self._flush_locked()
            except Exception as exc:
                # Raised in the task at its next report: the timer has no caller to tell.
                log.warning("coalesced progress report not sent: %s", exc)
                self._deferred_error = exc

    def _start_timer(self, delay: float) -> None:
        self._timer = threading.Timer(max(delay, 0.0), self._on_timer)
        self._timer.daemon = True
        self._timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class AsyncProgressThrottle:
    """The same coalescing for asyncio code, with `loop.call_later` as the timer."""

    def __init__(self, send: Callable[[Report], Awaitable[object]], interval_ms: int) -> None:
        self._send = send
        self._interval = interval_ms / 1000
        self._lock = asyncio.Lock()
        self._last_sent = _NEVER
        self._last_step: object = _UNSET
        self._pending: Report | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._deferred_error: Exception | None = None

    async def report(
        self,
        step: str | None = None,
        percent: float | None = None,
        current: int | None = None,
        total: int | None = None,
        message: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        now = time.monotonic()
        if self._deferred_error is not None:
            error, self._deferred_error = self._deferred_error, None
            raise error
        if step == self._last_step and now - self._last_sent < self._interval:
            self._pending = Report(step, percent, current, total, message, data)
            if self._timer is None:
                loop = asyncio.get_running_loop()
                delay = max(self._last_sent + self._interval - now, 0.0)
                self._timer = loop.call_later(delay, self._on_timer)
            return
        self._pending = None
        self._last_sent, self._last_step = now, step
        async with self._lock:
            await self._send(Report(step, percent, current, total, message, data))

    def offer(self, report: Report) -> None:
        """`report` without awaiting, for sync code on the loop (`track` in an ARQ job):
        kept as the latest value and sent by the timer, at most once per interval."""
        self._pending = report
        if self._timer is None:
            loop = asyncio.get_running_loop()
            delay = max(self._last_sent + self._interval - time.monotonic(), 0.0)
            self._timer = loop.call_later(delay, self._on_timer)

    async def flush(self) -> None:
        self._cancel_timer()
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        await self._flush()

    def close(self) -> None:
        self._cancel_timer()
        self._pending = None

    async def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._last_sent, self._last_step = time.monotonic(), pending.step
            async with self._lock:
                await self._send(pending)

    def _on_timer(self) -> None:
        self._timer = None
        self._flushing = asyncio.ensure_future(self._timed_flush())

    async def _timed_flush(self) -> None:
        try:
            await self._flush()
        except Exception as exc:
            log.warning("coalesced progress report not sent: %s", exc)
            self._deferred_error = exc
        finally:
            self._flushing = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
