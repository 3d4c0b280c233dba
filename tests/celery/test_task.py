"""The demo tasks' pure logic and the update_state mapping (no worker needed)."""

from __future__ import annotations

import csv
import io

import pytest

from progress_streamer.protocol.event import check_report
from workers.tasks.report import (
    fail_error,
    fail_plan,
    render_csv,
    report_plan,
    report_rows,
    report_summary,
)


@pytest.mark.parametrize("steps", [1, 2, 20, 1000])
def test_the_report_goes_fetching_rendering_saving_with_rising_percent(steps: int) -> None:
    plan = report_plan(steps)
    names = [s.step for s in plan]
    assert names == ["fetching"] * steps + ["rendering", "saving"]
    percents = [s.percent for s in plan]
    assert percents == sorted(percents) and 0 < percents[0] and percents[-1] == 100
    assert [(s.current, s.total) for s in plan[:steps]] == [(i, steps) for i in range(1, steps + 1)]


def test_the_report_is_a_real_csv_described_by_its_result() -> None:
    rows = report_rows("job1", 4)
    assert rows == report_rows("job1", 4)  # the same for one job
    data = render_csv(rows)
    parsed = list(csv.reader(io.StringIO(data.decode())))
    assert parsed[0] == ["page", "region", "units", "revenue"]
    assert len(parsed) == 1 + 4 + 1 and parsed[-1][0] == "total"
    assert report_summary("r.csv", 4, data) == {
        "filename": "r.csv", "content_type": "text/csv", "rows": 4, "bytes": len(data),
    }  # fmt: skip


def test_demo_fail_reports_up_to_the_asked_percent() -> None:
    assert [s.percent for s in fail_plan(35)] == [0, 10, 20, 30, 35]
    assert [s.percent for s in fail_plan(0)] == [0]
    assert str(fail_error(35)) == "demo.fail failed at 35% as asked"


@pytest.mark.parametrize(
    "report",
    [{"percent": 100.5}, {"percent": float("nan")}, {"percent": True}, {"percent": "5"},
     {"current": 1.5}, {"total": -1}, {"step": 3}, {"message": b"x"}],
)  # fmt: skip
def test_a_bad_report_is_refused_before_the_throttle(report: dict[str, object]) -> None:
    fields = {"step": None, "percent": None, "current": None, "total": None, "message": None}
    with pytest.raises(ValueError):
        check_report(**{**fields, **report})


def test_a_good_report_passes() -> None:
    check_report("s", 0, 0, 0, "m")
    check_report(None, 100.0, None, None, None)
