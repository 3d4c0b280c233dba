"""The demo page and `<job-progress>` in Chromium, with the progress app mounted at
`/progress` inside a user's FastAPI app (real uvicorn, Redis and prefork Celery worker).

Neither page is told where the app lives: the demo page loads its assets and calls the
API relative to itself, and `<job-progress>` (no `base-url`) derives its base from its
script's URL. Every test fails on a JS error or a console error (a 404 asset is one).

Set PROGRESS_ELEMENT_SCREENSHOT=docs/job-progress.png to also write the screenshot of
docs/fastapi.md.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse
from playwright.sync_api import Browser, Page, expect, sync_playwright

from progress_streamer.protocol.settings import Settings
from progress_streamer.redis_server import RedisServer
from progress_streamer.web import create_app
from tests.integration.test_browser import FETCH, WAIT_MS, assert_contiguous, job_id, start_job
from tests.support.browser import CHROMIUM, LAUNCH_ARGS, RECORD_FRAMES, PageRecorder
from tests.support.celery_worker import Worker, running_worker, sender, worker_settings
from tests.support.host_app import Served, serving

pytestmark = [pytest.mark.browser, pytest.mark.worker]

PREFIX = "/progress"
SCREENSHOT = os.environ.get("PROGRESS_ELEMENT_SCREENSHOT")

# The user's page: the script from where the app is mounted, one element per job. The
# second copy of each job is restyled by the page: a custom property and a ::part rule.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Reports</title>
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<script type="module" src="/progress/static/progress.js"></script>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 40rem; }}
  job-progress.custom {{ --job-progress-height: 14px; --job-progress-fill: rgb(10, 120, 90); }}
  job-progress.custom::part(status) {{ color: rgb(1, 2, 3); }}
</style></head>
<body><h1>Your reports</h1>
{elements}
</body></html>
"""


@pytest.fixture(scope="module")
def settings(redis_server: RedisServer) -> Settings:
    base = worker_settings(redis_server.url, lease_seconds=10)
    return base.replace(auth="token", secret="mounted-browser-secret-0123456789-0123456789")


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, settings: Settings) -> Iterator[Worker]:
    with running_worker(redis_server.url, settings=settings, concurrency=4) as w:
        yield w


def user_app(settings: Settings, worker: Worker) -> FastAPI:
    """A user's FastAPI app: the progress app at /progress, a page of `<job-progress>`."""
    _, runner = sender(settings, worker.queue)
    progress_app = create_app(settings, runners={"celery": runner})
    api = FastAPI(lifespan=progress_app.lifespan)
    api.mount(PREFIX, progress_app)

    @api.get("/reports", response_class=HTMLResponse)
    def reports(
        job: Annotated[list[str], Query()],
        token: Annotated[list[str], Query()],
        custom: bool = False,
    ) -> str:
        elements = []
        for one_job, one_token in zip(job, token, strict=True):
            attrs = f'job="{html.escape(one_job)}" token="{html.escape(one_token)}"'
            elements.append(f"<job-progress {attrs}></job-progress>")
            if custom:
                elements.append(f'<job-progress class="custom" {attrs}></job-progress>')
        return PAGE.format(elements="\n".join(elements))

    return api


@pytest.fixture(scope="module")
def served(settings: Settings, worker: Worker) -> Iterator[Served]:
    with serving(user_app(settings, worker)) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def recorder(browser: Browser) -> Iterator[PageRecorder]:
    context = browser.new_context(viewport={"width": 900, "height": 600})
    context.add_init_script(RECORD_FRAMES)
    context.set_default_timeout(WAIT_MS)
    rec = PageRecorder(context.new_page())
    yield rec
    context.close()
    errors = rec.unexpected_errors()
    assert not errors, f"errors on the page: {errors}"


@pytest.fixture
def page(recorder: PageRecorder) -> Page:
    return recorder.page


def enqueue(served: Served, task: str = "demo.report", **params: int) -> tuple[str, str]:
    body = {"task": task, "params": params}
    answer = httpx.post(f"{served.url}{PREFIX}/api/v1/jobs", json=body, timeout=10)
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"], answer.json()["token"]


def test_the_demo_page_works_under_the_prefix(
    page: Page, recorder: PageRecorder, served: Served
) -> None:
    page.goto(f"{served.url}{PREFIX}/?steps=5&step_ms=100")
    sheets = "[...document.styleSheets].map(s => s.href)"
    assert f"{served.url}{PREFIX}/static/demo.css" in page.evaluate(sheets)
    card = start_job(page, "#start-report")
    expect(card).to_have_attribute("data-status", "success")
    expect(card.locator(".percent")).to_have_text("100%")
    href = card.locator("a.download").get_attribute("href")
    assert href and href.startswith(f"{served.url}{PREFIX}/api/v1/jobs/{job_id(card)}/result?")
    assert page.evaluate(FETCH, href)["status"] == 200
    assert_contiguous(recorder.frames(job_id(card)), "success")
    assert recorder.watch_posts == 1
    assert recorder.stream_urls, "no stream was opened"
    assert all(u.startswith(f"{served.url}{PREFIX}/api/v1/") for u in recorder.stream_urls)

    page.evaluate("history.replaceState(null, '', '?steps=100&step_ms=200')")  # slower jobs
    card = start_job(page, "#start-report")  # cancelling calls the API too
    expect(card).to_have_attribute("data-status", "progress")
    card.locator("button.cancel").click()
    expect(card).to_have_attribute("data-status", "revoked")


def test_job_progress_finds_the_api_from_its_script_and_is_styled(
    page: Page, served: Served
) -> None:
    job, token = enqueue(served, steps=5, step_ms=100)
    page.goto(f"{served.url}/reports?job={job}&token={token}&custom=true")
    plain, custom = page.locator("job-progress").all()
    for element in (plain, custom):
        expect(element).to_have_attribute("data-status", "success")
        expect(element.locator(".percent")).to_have_text("100%")
        expect(element.locator(".status")).to_have_text("success")
    link = plain.locator("a.download")
    expect(link).to_have_text(f"Download report-{job}.csv")
    href = link.get_attribute("href")
    assert href and href.startswith(f"{served.url}{PREFIX}/api/v1/jobs/{job}/result?token=")
    assert page.evaluate(FETCH, href)["status"] == 200

    # Readable by default: a label line laid out in a row, a visible bar.
    style = "(e, p) => getComputedStyle(e)[p]"
    line, bar = plain.locator(".line"), plain.locator("progress")
    assert line.evaluate(style, "display") == "flex"
    assert float(bar.evaluate(style, "height").removesuffix("px")) >= 6
    assert plain.locator(".status").evaluate(style, "color") != "rgb(1, 2, 3)"
    # The page restyles it: a custom property and a ::part rule.
    assert custom.locator("progress").evaluate(style, "height") == "14px"
    assert custom.locator(".status").evaluate(style, "color") == "rgb(1, 2, 3)"


@pytest.mark.skipif(not SCREENSHOT, reason="set PROGRESS_ELEMENT_SCREENSHOT to write it")
def test_screenshot_of_job_progress(page: Page, served: Served) -> None:
    done = enqueue(served, steps=4, step_ms=50)
    failed = enqueue(served, "demo.fail", fail_at=60, step_ms=300)  # fails while shown
    running = enqueue(served, steps=100, step_ms=150)
    jobs = [done, failed, running]
    query = "&".join(f"job={j}&token={t}" for j, t in jobs)
    page.goto(f"{served.url}/reports?{query}")
    first, second, third = page.locator("job-progress").all()
    expect(first).to_have_attribute("data-status", "success")
    expect(second).to_have_attribute("data-status", "failure")
    expect(third.locator(".percent")).to_have_text(re.compile(r"^([3-6]\d)%$"))
    assert SCREENSHOT
    box = page.locator("body").bounding_box()
    assert box
    margin = 24  # the page's own whitespace around its content
    clip = {"x": box["x"] - margin, "y": box["y"] - margin}
    clip |= {"width": box["width"] + 2 * margin, "height": box["height"] + 2 * margin}
    page.screenshot(path=SCREENSHOT, clip=clip)  # type: ignore[arg-type]
    answer = httpx.delete(f"{served.url}{PREFIX}/api/v1/jobs/{running[0]}?token={running[1]}")
    assert answer.status_code == 202  # frees the pool process
