"""The demo tasks on ARQ: `demo.report` and `demo.fail` (SPEC.md, "Demo tasks").

The same walk as the Celery tasks (`workers.tasks.report` holds it, free of either
runner); parameters are validated by the catalog before they are enqueued.
"""

from __future__ import annotations

import asyncio
from typing import Any

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


async def demo_report(ctx: dict[Any, Any], steps: int = 20, step_ms: int = 200) -> dict[str, Any]:
    """Fetch `steps` pages, render them as CSV, attach the file and describe it."""
    job_id = str(ctx.get("job_id") or "local")
    rows = report_rows(job_id, steps)
    data = b""
    filename = report_filename(job_id)
    previous = None
    for item in report_plan(steps):
        if item.step == "saving":
            await ctx["attach_file"](filename, data, "text/csv")
        await ctx["progress"](
            step=item.step,
            percent=item.percent,
            current=item.current,
            total=item.total,
            message=item.message,
        )
        if (line := log_line(previous, item, steps)) is not None:
            await ctx["log"](line)
        previous = item
        if item.step == "rendering":
            data = render_csv(rows)
        await asyncio.sleep(step_ms / 1000)
    return report_summary(filename, len(rows), data)


async def demo_fail(ctx: dict[Any, Any], fail_at: int = 50, step_ms: int = 200) -> None:
    """Report progress up to `fail_at` percent, then fail with `DemoFailure`."""
    for item in fail_plan(fail_at):
        await ctx["progress"](step=item.step, percent=item.percent, message=item.message)
        await asyncio.sleep(step_ms / 1000)
    raise fail_error(fail_at)
