"""The demo tasks' logic, free of Celery and ARQ: their steps, the report's rows and CSV.

A runner walks `report_plan(steps)` (reporting each `DemoStep` and sleeping `step_ms`),
then stores `render_csv(...)` as the job's file and returns `report_summary(...)`.
`fail_plan(fail_at)` is `demo.fail`'s walk before it raises `DemoFailure`.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass

REGIONS = ("north", "south", "east", "west")
FETCH_SHARE = 80.0  # percent of the bar spent fetching; rendering and saving share the rest


class DemoFailure(RuntimeError):
    """`demo.fail` failing, as asked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoStep:
    """One progress report of a demo task."""

    step: str
    percent: float
    current: int | None = None
    total: int | None = None
    message: str | None = None


def report_plan(steps: int) -> list[DemoStep]:
    """fetching 1..steps (0 -> 80 %), then rendering (90 %), then saving (100 %)."""
    plan = [
        DemoStep(
            step="fetching",
            percent=round(FETCH_SHARE * i / steps, 2),
            current=i,
            total=steps,
            message=f"fetched page {i} of {steps}",
        )
        for i in range(1, steps + 1)
    ]
    plan.append(DemoStep(step="rendering", percent=90.0, message=f"rendering {steps} rows as CSV"))
    plan.append(DemoStep(step="saving", percent=100.0, message="saving the report"))
    return plan


def log_line(previous: DemoStep | None, item: DemoStep, steps: int) -> str | None:
    """The log line a demo report writes when it enters a step (None within a step)."""
    if previous is not None and previous.step == item.step:
        return None
    return {
        "fetching": f"fetching {steps} pages",
        "rendering": f"rendering {steps} rows as CSV",
        "saving": "saving the report for download",
    }.get(item.step)


def report_rows(job_id: str, steps: int) -> list[tuple[int, str, int, float]]:
    """One row per fetched page: (page, region, units, revenue), the same for one job."""
    rng = random.Random(job_id)
    rows = []
    for page in range(1, steps + 1):
        units = rng.randint(1, 500)
        rows.append((page, rng.choice(REGIONS), units, round(units * rng.uniform(2.0, 40.0), 2)))
    return rows


def render_csv(rows: list[tuple[int, str, int, float]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("page", "region", "units", "revenue"))
    writer.writerows(rows)
    writer.writerow(("total", "", sum(r[2] for r in rows), round(sum(r[3] for r in rows), 2)))
    return out.getvalue().encode()


def report_filename(job_id: str) -> str:
    return f"report-{job_id}.csv"


def report_summary(filename: str, rows: int, data: bytes) -> dict[str, object]:
    """The JSON result of `demo.report` (never null)."""
    return {"filename": filename, "content_type": "text/csv", "rows": rows, "bytes": len(data)}


def fail_plan(fail_at: int) -> list[DemoStep]:
    """Reports every 10 % up to `fail_at`, then the task raises `fail_error(fail_at)`."""
    percents = [*range(0, fail_at, 10), fail_at]
    return [DemoStep(step="working", percent=float(p), message=f"working ({p}%)") for p in percents]


def fail_error(fail_at: int) -> DemoFailure:
    return DemoFailure(f"demo.fail failed at {fail_at}% as asked")
