"""Rate and time left from a trailing window of the reports sent."""

from __future__ import annotations

from progress_streamer.protocol.estimate import RateEstimator
from progress_streamer.protocol.event import Report


def counting(current: int, total: int | None = 1000, step: str = "s") -> Report:
    return Report(step, None, current, total, None)


def test_nothing_until_three_samples_span_two_seconds() -> None:
    est = RateEstimator()
    assert est.observe(counting(0), 0.0) == (None, None)
    assert est.observe(counting(10), 1.0) == (None, None)
    assert est.observe(counting(15), 1.5) == (None, None)  # 3 samples, 1.5 s
    rate, eta = est.observe(counting(20), 2.0)
    assert rate == 10.0 and eta == 98.0


def test_steady_progress_is_within_10_percent_after_a_fifth_of_the_work() -> None:
    """10 items per second, 0.1 s between reports, with jitter in the work."""
    est = RateEstimator()
    total, now, done = 1000, 0.0, 0
    while done < total:
        done += 1
        now += 0.1 * (1.3 if done % 3 == 0 else 0.85)  # uneven items, steady on average
        rate, eta = est.observe(counting(done), now)
        if done >= total // 5:
            assert rate is not None and eta is not None
            truth = (total - done) / 10.0
            assert abs(eta - truth) <= 0.1 * truth + 0.5, (done, eta, truth)


def test_percent_when_not_counting_and_a_new_step_with_its_total_starts_over() -> None:
    est = RateEstimator()
    for second in range(5):
        rate, eta = est.observe(Report("a", 10.0 * second, None, None, None), float(second))
    assert (rate, eta) == (10.0, 6.0)
    assert est.observe(counting(1, total=50, step="b"), 5.0) == (None, None)


def test_progress_going_back_starts_over() -> None:
    est = RateEstimator()
    for second in range(4):
        est.observe(counting(100 * second), float(second))
    assert est.observe(counting(5), 4.0) == (None, None)
