"""Progress coalescing: first, step changes and the last value get through; floods don't."""

from __future__ import annotations

import asyncio
import threading

import pytest

from progress_streamer.protocol.event import Report
from progress_streamer.protocol.throttle import AsyncProgressThrottle, ProgressThrottle


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Report] = []
        self.flushed = threading.Event()

    def __call__(self, report: Report) -> None:
        self.sent.append(report)
        self.flushed.set()


def test_a_flood_sends_the_first_the_step_changes_and_the_last_value() -> None:
    sent = Recorder()
    throttle = ProgressThrottle(sent, interval_ms=60_000)
    for i in range(10_000):
        throttle.report(step="fetching", percent=i / 200)
    throttle.report(step="rendering", percent=60)
    throttle.report(step="rendering", percent=70)
    throttle.report(step="rendering", percent=80)
    throttle.flush()
    assert [(r.step, r.percent) for r in sent.sent] == [
        ("fetching", 0.0),
        ("rendering", 60),
        ("rendering", 80),
    ]


def test_a_quiet_task_still_shows_its_last_value() -> None:
    sent = Recorder()
    throttle = ProgressThrottle(sent, interval_ms=50)
    throttle.report(step="s", percent=1)
    sent.flushed.clear()
    throttle.report(step="s", percent=2)
    throttle.report(step="s", percent=3, message="last")
    assert sent.flushed.wait(timeout=10), "the timer never flushed the coalesced value"
    assert sent.sent[-1] == Report("s", 3, None, None, "last")
    assert len(sent.sent) == 2


def test_a_pending_value_is_flushed_before_a_status_change_and_dropped_on_close() -> None:
    sent = Recorder()
    throttle = ProgressThrottle(sent, interval_ms=60_000)
    throttle.report(percent=1)
    throttle.report(percent=2)
    throttle.flush()
    assert [r.percent for r in sent.sent] == [1, 2]
    throttle.report(percent=3)
    throttle.close()
    throttle.flush()
    assert [r.percent for r in sent.sent] == [1, 2]


def test_an_error_in_a_timed_flush_is_raised_at_the_next_report() -> None:
    failed = threading.Event()

    def send(report: Report) -> None:
        if report.percent == 2:
            failed.set()
            raise ValueError("too large")

    throttle = ProgressThrottle(send, interval_ms=20)
    throttle.report(percent=1)
    throttle.report(percent=2)
    assert failed.wait(timeout=10)
    with pytest.raises(ValueError, match="too large"):
        for _ in range(1000):  # bounded: the timer thread sets the error after `send`
            throttle.report(percent=3)
            if not failed.is_set():
                break


async def test_the_async_throttle_coalesces_and_flushes_on_a_timer() -> None:
    sent: list[Report] = []
    done = asyncio.Event()

    async def send(report: Report) -> None:
        sent.append(report)
        if report.percent == 99:
            done.set()

    throttle = AsyncProgressThrottle(send, interval_ms=50)
    for i in range(100):
        await throttle.report(step="s", percent=i)
    await asyncio.wait_for(done.wait(), timeout=10)
    assert [r.percent for r in sent] == [0, 99]
    await throttle.report(step="t", percent=1)
    await throttle.report(step="t", percent=2)
    await throttle.flush()
    assert [r.percent for r in sent] == [0, 99, 1, 2]
