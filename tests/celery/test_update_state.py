"""`update_state` meta as Celery users write it, mapped to a progress report."""

from __future__ import annotations

import math

import pytest

from progress_streamer.celery.update_state import report_of
from progress_streamer.protocol.event import Report


def test_the_progress_fields_and_the_rest_as_data() -> None:
    report, dropped = report_of("PROGRESS", {"step": "s", "percent": 5, "rows_done": 10})
    assert report == Report("s", 5.0, None, None, None, {"rows_done": 10})
    assert dropped == []


def test_numeric_strings_are_numbers_and_percent_comes_from_counts() -> None:
    report, dropped = report_of("PROGRESS", {"percent": "50", "current": "3", "total": "4"})
    assert (report.percent, report.current, report.total, dropped) == (50.0, 3, 4, [])
    assert report_of("PROGRESS", {"current": 1, "total": 4})[0].percent == 25.0
    assert report_of("PROGRESS", {"current": 9, "total": 4})[0].percent == 100.0
    assert report_of("PROGRESS", {"current": 1, "total": 0})[0].percent is None


def test_a_custom_state_names_the_step_unless_meta_does() -> None:
    assert report_of("DOWNLOADING", {"percent": 10})[0].step == "downloading"
    assert report_of("DOWNLOADING", {"step": "fetch"})[0].step == "fetch"
    assert report_of("PROGRESS", {})[0].step is None


@pytest.mark.parametrize(
    ("meta", "dropped_name"),
    [
        ({"percent": "half"}, "percent"),
        ({"percent": 101}, "percent"),
        ({"percent": math.nan}, "percent"),
        ({"percent": True}, "percent"),
        ({"current": -1}, "current"),
        ({"total": 2.5}, "total"),
        ({"step": ["a"]}, "step"),
        ({"message": 3}, "message"),
        ({"blob": object()}, "blob"),
        ({"nan": math.inf}, "nan"),
    ],
)
def test_a_value_that_cannot_be_used_is_dropped_and_named(
    meta: dict[str, object], dropped_name: str
) -> None:
    report, dropped = report_of("PROGRESS", {**meta, "rows": 1})
    assert len(dropped) == 1 and dropped[0].startswith(dropped_name)
    assert report.data == {"rows": 1}  # the rest still goes out


def test_meta_that_is_not_a_mapping_reports_nothing_but_the_state() -> None:
    report, dropped = report_of("DOWNLOADING", ["x"])
    assert report == Report("downloading", None, None, None, None, None)
    assert dropped == ["meta (not a mapping)"]
