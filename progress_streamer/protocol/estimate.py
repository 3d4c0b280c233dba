"""Rate and time left, estimated in the worker when a report is sent (no Redis work).

Over a trailing window of the reports actually sent (at most one per throttle
interval), the rate is the change of `current` (when the task counts) or of `percent`
per second, and the time left is what remains at that rate. Nothing is estimated until
there are at least `MIN_SAMPLES` samples spanning `MIN_SPAN` seconds; a change of step
that brings its own `total`, a change of unit, or a value going back starts over.
"""

from __future__ import annotations

from collections import deque

from progress_streamer.protocol.event import Report

WINDOW_SECONDS = 30.0
MIN_SAMPLES = 3
MIN_SPAN = 2.0


class RateEstimator:
    """Samples of one attempt's progress; `observe` returns (rate, eta_seconds)."""

    __slots__ = ("_key", "_samples")

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=64)
        self._key: tuple[object, ...] = ()

    def observe(self, report: Report, now: float) -> tuple[float | None, float | None]:
        counting = report.current is not None
        value = report.current if counting else report.percent
        if value is None:
            return None, None
        goal = report.total if counting else 100.0
        key = (counting, report.step if report.total is not None else None, report.total)
        samples = self._samples
        if key != self._key or (samples and value < samples[-1][1]):
            samples.clear()
            self._key = key
        samples.append((now, float(value)))
        while len(samples) > MIN_SAMPLES and now - samples[0][0] > WINDOW_SECONDS:
            samples.popleft()
        return _estimate(samples, goal)


def _estimate(
    samples: deque[tuple[float, float]], goal: float | None
) -> tuple[float | None, float | None]:
    (t0, v0), (t1, v1) = samples[0], samples[-1]
    if len(samples) < MIN_SAMPLES or t1 - t0 < MIN_SPAN:
        return None, None
    rate = (v1 - v0) / (t1 - t0)
    if rate <= 0:
        return round(rate, 6), None
    eta = None if goal is None else max(goal - v1, 0.0) / rate
    return round(rate, 6), None if eta is None else round(eta, 3)
