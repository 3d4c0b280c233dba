"""The demo page in a real headless Chromium, against the real system with auth on.

Redis (the session's), the web app as a uvicorn process (`create_app_from_env`, as the
Procfile runs it) and a prefork Celery worker. Jobs are kept short through the page's
`?steps=&step_ms=&fail_at=` query. Every test fails on a JS error or a console error.

Set PROGRESS_SCREENSHOT=docs/demo.png to also write the README's screenshot.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from progress_streamer.protocol.event import ErrorInfo, EventDraft
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer
from tests.support.browser import CHROMIUM, LAUNCH_ARGS, RECORD_FRAMES, PageRecorder, WebProcess
from tests.support.celery_worker import Worker, running_worker, worker_settings

pytestmark = [pytest.mark.browser, pytest.mark.worker]

WAIT_MS = 30_000  # generous: other test suites may be loading this machine's CPUs
SCREENSHOT = os.environ.get("PROGRESS_SCREENSHOT")
# A killed web process: the page's stream and its probes fail until the new one is up.
NETWORK_ERROR = r"net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|EMPTY_RESPONSE|INCOMPLETE_CHUNKED)"

# Runs in the page: fetches a URL as the page would, and reports what came back.
FETCH = """async (url) => {
  const r = await fetch(url);
  return {status: r.status, disposition: r.headers.get("content-disposition"),
          type: r.headers.get("content-type"), body: await r.text()};
}"""


@pytest.fixture(scope="module")
def settings(redis_server: RedisServer) -> Settings:
    """Worker and web share the key prefix; the web process checks tokens."""
    base = worker_settings(redis_server.url, lease_seconds=10)
    return base.replace(auth="token", secret="browser-test-secret-0123456789-0123456789")


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, settings: Settings) -> Iterator[Worker]:
    # The web process's CeleryRunner sends to Celery's default queue, on this session's Redis.
    with running_worker(redis_server.url, settings=settings, queue="celery", concurrency=4) as w:
        yield w


@pytest.fixture(scope="module")
def web(settings: Settings, worker: Worker) -> Iterator[WebProcess]:
    process = WebProcess(settings)
    process.start()
    yield process
    process.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def recorder(browser: Browser) -> Iterator[PageRecorder]:
    """A fresh page (its own sessionStorage) that records its errors and streams."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
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


def job_ids(page: Page) -> list[str]:
    ids: list[str] = page.locator("li.job").evaluate_all("els => els.map(e => e.dataset.jobId)")
    return ids


def start_job(page: Page, button: str) -> Locator:
    """Clicks a start button and returns the card of the job it started."""
    before = set(job_ids(page))
    page.click(button)
    page.wait_for_function("n => document.querySelectorAll('li.job').length > n", arg=len(before))
    (new,) = [i for i in job_ids(page) if i not in before]
    return page.locator(f'li.job[data-job-id="{new}"]')


def job_id(card: Locator) -> str:
    value = card.get_attribute("data-job-id")
    assert value
    return value


def assert_contiguous(frames: list[dict[str, Any]], terminal: str) -> None:
    """One job's frames: every seq once, none missing, ending with `terminal`."""
    assert frames, "the page got no event of this job"
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert frames[-1]["status"] == terminal, frames[-1]


def test_report_reaches_100_and_its_download_works(
    page: Page, recorder: PageRecorder, web: WebProcess
) -> None:
    page.goto(f"{web.url}/?steps=5&step_ms=100")
    card = start_job(page, "#start-report")
    expect(card).to_have_attribute("data-status", "success")
    expect(card.locator(".status")).to_have_text("success")
    expect(card.locator(".percent")).to_have_text("100%")
    expect(card.locator("progress")).to_have_js_property("value", 100)
    expect(card.locator("button.cancel")).to_have_count(0)
    frames = recorder.frames(job_id(card))
    assert_contiguous(frames, "success")
    assert [f["current"] for f in frames if f["step"] == "fetching"][-1] == 5

    link = card.locator("a.download")
    expect(link).to_have_attribute("download", "")
    href = link.get_attribute("href")
    assert href and "token=" in href  # auth is on: the link carries the job's token
    answer = page.evaluate(FETCH, href)
    filename = f"report-{job_id(card)}.csv"
    assert answer["status"] == 200
    assert answer["disposition"].startswith("attachment; filename=")
    assert filename in answer["disposition"]
    assert answer["type"].startswith("text/csv")
    assert answer["body"].startswith("page,region,units,revenue\r\n")
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == filename


def test_a_job_shows_its_time_left_and_last_log_lines(page: Page, web: WebProcess) -> None:
    page.goto(f"{web.url}/?steps=60&step_ms=100")
    card = start_job(page, "#start-report")
    # Estimable after 3 reports over 2 s of steady fetching (6 s in all).
    expect(card.locator(".eta")).to_contain_text(" left", timeout=15_000)
    expect(card).to_have_attribute("data-status", "success", timeout=30_000)
    expect(card.locator(".eta")).to_have_text("")  # nothing left once it is over
    # The lines written while the page followed the job, oldest first.
    expect(card.locator(".logs .log")).to_contain_text(
        ["rendering 60 rows as CSV", "saving the report for download"]
    )


def test_failing_job_shows_its_error(page: Page, recorder: PageRecorder, web: WebProcess) -> None:
    page.goto(f"{web.url}/?fail_at=30&step_ms=50")
    card = start_job(page, "#start-fail")
    expect(card).to_have_attribute("data-status", "failure")
    expect(card.locator(".status")).to_have_text("failure")
    expect(card.locator(".error .error-type")).to_have_text("DemoFailure")
    expect(card.locator(".error")).to_have_text("DemoFailure: demo.fail failed at 30% as asked")
    expect(card.locator(".percent")).to_have_text("30%")  # the bar stays where it failed
    expect(card.locator("a.download")).to_have_count(0)
    expect(card.locator("button.cancel")).to_have_count(0)
    assert_contiguous(recorder.frames(job_id(card)), "failure")


def test_cancel_shows_revoked(page: Page, recorder: PageRecorder, web: WebProcess) -> None:
    page.goto(f"{web.url}/?steps=100&step_ms=200")
    card = start_job(page, "#start-report")
    expect(card).to_have_attribute("data-status", "progress")
    card.locator("button.cancel").click()
    expect(card).to_have_attribute("data-status", "revoked")
    expect(card.locator(".status")).to_have_text("revoked")
    expect(card.locator("button.cancel")).to_have_count(0)
    expect(card.locator("a.download")).to_have_count(0)
    assert_contiguous(recorder.frames(job_id(card)), "revoked")


def test_ten_jobs_finish_over_one_stream(
    page: Page, recorder: PageRecorder, web: WebProcess
) -> None:
    page.goto(f"{web.url}/?steps=5&step_ms=100")
    page.click("#start-ten")
    expect(page.locator("li.job")).to_have_count(10)
    expect(page.locator('li.job[data-status="success"]')).to_have_count(10)
    expect(page.locator("li.job a.download")).to_have_count(10)
    expect(page.locator("li.job .percent")).to_have_text(["100%"] * 10)
    expect(page.locator("#conn-state")).to_have_text("No live stream")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "idle")
    rec = recorder
    assert rec.watch_posts == 1
    assert len(rec.stream_urls) == 1, rec.stream_urls
    assert "/api/v1/watches/" in rec.stream_urls[0]
    for job in job_ids(page):
        assert_contiguous(rec.frames(job), "success")


def test_a_group_is_one_bar_with_its_children_over_one_stream(
    page: Page, recorder: PageRecorder, web: WebProcess
) -> None:
    page.goto(f"{web.url}/?steps=5&step_ms=50")
    page.click("#start-group")
    group = page.locator("li.job:not(.child)")
    expect(group).to_have_count(1)
    children = group.locator("li.job.child")
    expect(children).to_have_count(8)
    expect(children.first).to_be_hidden()  # folded until the list is opened
    group.locator("details.children > summary").click()
    expect(children.first).to_be_visible()
    expect(group).to_have_attribute("data-status", "success")
    expect(group.locator(".children-counts")).to_have_text("8 succeeded")
    expect(page.locator("li.job.child[data-status=success]")).to_have_count(8)
    expect(group.locator(".percent").first).to_have_text("100%")
    assert recorder.watch_posts == 1
    assert len(recorder.stream_urls) == 1, recorder.stream_urls
    parent_frames = recorder.frames(job_id(group))
    assert_contiguous(parent_frames, "success")
    assert [f["percent"] for f in parent_frames] == sorted(f["percent"] for f in parent_frames)
    for child in children.all():
        assert_contiguous(recorder.frames(job_id(child)), "success")


def test_cancelling_a_group_revokes_it_and_its_children(
    page: Page, recorder: PageRecorder, web: WebProcess
) -> None:
    page.goto(f"{web.url}/?steps=100&step_ms=200")
    page.click("#start-group")
    group = page.locator("li.job:not(.child)")
    expect(group).to_have_attribute("data-status", "progress")
    expect(group.locator("li.job.child button.cancel")).to_have_count(0)  # one cancel: all
    group.locator("button.cancel").first.click()
    expect(group).to_have_attribute("data-status", "revoked")
    expect(page.locator("li.job.child[data-status=revoked]")).to_have_count(8)
    expect(group.locator(".children-counts")).to_have_text("8 revoked")
    assert_contiguous(recorder.frames(job_id(group)), "revoked")


def test_bar_resumes_after_the_web_process_is_killed(
    page: Page, recorder: PageRecorder, settings: Settings, worker: Worker
) -> None:
    web = WebProcess(settings)  # its own: this test kills it
    web.start()
    try:
        page.goto(f"{web.url}/?steps=30&step_ms=200")
        card = start_job(page, "#start-report")
        jid = job_id(card)
        page.wait_for_function(
            "id => window.__frames.some(f => f.job_id === id && f.current >= 3)", arg=jid
        )
        recorder.allow(NETWORK_ERROR)
        web.kill()
        seen_before = len(recorder.frames(jid))
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "reconnecting")
        web.start()  # a new process on the same port
        expect(card).to_have_attribute("data-status", "success")
        expect(card.locator(".percent")).to_have_text("100%")
        expect(card.locator("a.download")).to_have_count(1)
    finally:
        web.close()
    frames = recorder.frames(jid)
    assert len(frames) > seen_before
    assert_contiguous(frames, "success")
    assert len(recorder.stream_urls) >= 2  # it did reconnect


def test_server_text_never_becomes_markup(page: Page, web: WebProcess, worker: Worker) -> None:
    # One long step: the task reports once, then stays quiet, so its own events never
    # overwrite the text published here before the page is checked.
    page.goto(f"{web.url}/?steps=2&step_ms=60000")
    card = start_job(page, "#start-report")
    jid = job_id(card)
    expect(card).to_have_attribute("data-status", "progress")
    step, message = "<b>bold</b>", "<img src=x onerror=window.__xss=1>"
    error = ErrorInfo(type="<i>Evil</i>", message="<img src=x onerror=window.__xss=2> & <s>")
    client = redis.Redis.from_url(worker.settings.redis_url)
    try:
        publisher = Publisher(client, worker.settings)
        draft = EventDraft(job_id=jid, status=JobStatus.PROGRESS, step=step, message=message)
        assert publisher.publish(draft).accepted
        expect(card.locator(".step")).to_have_text(step)
        expect(card.locator(".message")).to_have_text(message)
        assert publisher.publish(
            EventDraft(job_id=jid, status=JobStatus.FAILURE, error=error)
        ).accepted
        expect(card).to_have_attribute("data-status", "failure")
        expect(card.locator(".error")).to_have_text(f"{error.type}: {error.message}")
    finally:
        client.close()
        worker.app.control.revoke(jid, terminate=True)  # frees the pool process
    expect(card.locator("img, b, i, s, script")).to_have_count(0)
    assert page.evaluate("window.__xss") is None


def test_jobs_survive_a_reload(page: Page, web: WebProcess) -> None:
    page.goto(f"{web.url}/?steps=3&step_ms=50")
    card = start_job(page, "#start-report")
    expect(card).to_have_attribute("data-status", "success")
    page.reload()
    expect(page.locator("li.job")).to_have_count(1)
    expect(card).to_have_attribute("data-status", "success")
    expect(card.locator(".percent")).to_have_text("100%")
    expect(card.locator("a.download")).to_have_count(1)
    expect(page.locator("#conn-state")).to_have_text("No live stream")


@pytest.mark.skipif(not SCREENSHOT, reason="set PROGRESS_SCREENSHOT=docs/demo.png to write it")
def test_screenshot_of_the_demo_page(page: Page, web: WebProcess) -> None:
    page.goto(f"{web.url}/?steps=12&step_ms=100&fail_at=60")
    done = start_job(page, "#start-report")
    expect(done).to_have_attribute("data-status", "success")
    failed = start_job(page, "#start-fail")
    expect(failed).to_have_attribute("data-status", "failure")
    page.evaluate("history.replaceState(null, '', '/?steps=100&step_ms=150')")  # slower jobs
    cancelled = start_job(page, "#start-report")
    expect(cancelled.locator(".percent")).to_have_text(re.compile(r"^([1-9]\d)%$"))
    cancelled.locator("button.cancel").click()
    expect(cancelled).to_have_attribute("data-status", "revoked")
    running = start_job(page, "#start-report")
    expect(running.locator(".percent")).to_have_text(re.compile(r"^([4-7]\d)%$"))
    assert SCREENSHOT
    page.screenshot(path=SCREENSHOT, full_page=True)
    worker_cleanup = running.locator("button.cancel")
    worker_cleanup.click()  # frees the pool process
    expect(running).to_have_attribute("data-status", "revoked")
