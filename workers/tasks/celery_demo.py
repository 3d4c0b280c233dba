"""The demo tasks on Celery: `demo.report` and `demo.fail` (SPEC.md, "Demo tasks").

Parameters are validated by the catalog (`progress_streamer.web.catalog`) before they are enqueued.
"""

from __future__ import annotations

import time
from typing import Any

from progress_streamer.celery import ProgressTask
from workers.celery_app import app
from workers.tasks.report import (
    fail_error,
    fail_plan,
    log_line,
    render_csv,
    report_filename,
    report_plan,
    report_rows,
    report_summary,
)


@app.task(bind=True, name="demo.report")  # type: ignore[untyped-decorator]
def report(self: ProgressTask, steps: int = 20, step_ms: int = 200) -> dict[str, Any]:
    """Fetch `steps` pages, render them as CSV, attach the file and describe it."""
    job_id = self.request.id or "local"
    rows = report_rows(job_id, steps)
    data = b""
    filename = report_filename(job_id)
    previous = None
    for item in report_plan(steps):
        if item.step == "saving":
            self.attach_file(filename, data, "text/csv")
        self.progress(item.step, item.percent, item.current, item.total, item.message)
        if (line := log_line(previous, item, steps)) is not None:
            self.log(line)
        previous = item
        if item.step == "rendering":
            data = render_csv(rows)
        time.sleep(step_ms / 1000)
    return report_summary(filename, len(rows), data)


@app.task(bind=True, name="demo.fail")  # type: ignore[untyped-decorator]
def fail(self: ProgressTask, fail_at: int = 50, step_ms: int = 200) -> None:
    """Report progress up to `fail_at` percent, then fail with `DemoFailure`."""
    for item in fail_plan(fail_at):
        self.progress(item.step, item.percent, message=item.message)
        time.sleep(step_ms / 1000)
    raise fail_error(fail_at)
