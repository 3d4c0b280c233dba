"""docs/django.md, end to end: the doc's own code blocks as a Django project in a temporary
folder, run as the doc says (nginx in front; Django; the progress app under uvicorn with
`--root-path /progress`; a prefork Celery worker), on the session's real Redis.

A logged-in user starts a report from a Django view (`build_report.delay`), gets a page
with a token minted for their own job, and the job streams to `success` through the
proxy and the progress app; another user gets neither the page nor the job. In Chromium,
the Django template's `<job-progress>` reaches 100 % and its download works.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("django", reason="Django is not installed (it is in the dev extra)")

from playwright.sync_api import Browser, expect, sync_playwright

from progress_streamer.redis_server import RedisServer
from tests.integration.test_browser import FETCH, WAIT_MS
from tests.support.browser import CHROMIUM, LAUNCH_ARGS, RECORD_FRAMES, PageRecorder
from tests.support.celery_worker import new_queue
from tests.support.django_site import Site, write_project
from tests.support.server import read_events

pytestmark = [pytest.mark.worker, pytest.mark.slow]

SECRET = "django-progress-secret-0123456789-0123456789"
PASSWORD = "correct horse battery staple"
USERS = (
    "from django.contrib.auth.models import User\n"
    f"for name in ('alice', 'bob'): User.objects.create_user(name, password={PASSWORD!r})\n"
)
ELEMENT = re.compile(r'<job-progress job="([\w-]+)" token="([\w.-]+)"></job-progress>')


@pytest.fixture(scope="module")
def site(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("mysite")
    files = write_project(folder)
    queue = new_queue()
    env = {
        **os.environ,
        "PYTHONPATH": str(folder),
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": redis_server.url,
        "PROGRESS_KEY_PREFIX": f"dj{uuid.uuid4().hex[:10]}",
        "PROGRESS_AUTH": "token",
        "PROGRESS_SECRET": SECRET,
        "PROGRESS_THROTTLE_MS": "50",
        "TEST_CELERY_QUEUE": queue,
    }
    site = Site(folder, env, queue)
    site.run("-m", "django", "makemigrations", "reports")
    site.run("-m", "django", "migrate", "--noinput")
    site.run("-c", f"import django; django.setup()\n{USERS}")
    try:
        site.start(files["deploy/nginx.conf"])
        yield site
    except BaseException:
        print(site.logs())
        raise
    finally:
        site.stop()


def log_in(client: httpx.Client, user: str) -> None:
    client.get("/accounts/login/")
    form = {
        "username": user,
        "password": PASSWORD,
        "csrfmiddlewaretoken": client.cookies["csrftoken"],
    }
    answer = client.post("/accounts/login/", data=form)
    assert answer.status_code == 302, answer.text


def start_report(client: httpx.Client, rows: int) -> str:
    """The report page's path, where the Django view redirects after `.delay()`."""
    client.get("/reports/")
    form = {"rows": str(rows), "csrfmiddlewaretoken": client.cookies["csrftoken"]}
    answer = client.post("/reports/start/", data=form)
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def test_a_users_job_streams_to_success_through_the_proxy(site: Site) -> None:
    with (
        httpx.Client(base_url=site.url, timeout=30) as alice,
        httpx.Client(base_url=site.url, timeout=30) as bob,
    ):
        log_in(alice, "alice")
        page_path = start_report(alice, rows=40)  # 2 s of work: the stream sees it live
        page = alice.get(page_path)
        assert page.status_code == 200
        found = ELEMENT.search(page.text)
        assert found, page.text
        job, token = found.groups()
        assert page_path == f"/reports/{job}/"
        assert alice.get("/progress/static/progress.js").status_code == 200

        events = read_events(alice, f"/progress/api/v1/jobs/{job}/events?token={token}")
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(int(seqs[0]), int(seqs[0]) + len(seqs))), seqs  # type: ignore[call-overload]
        assert events[-1]["status"] == "success"
        assert events[-1]["result"] == {"rows": 40, "filename": "report.csv"}
        assert any(e["status"] == "progress" and e["step"] == "building" for e in events)

        auth = {"Authorization": f"Bearer {token}"}
        status = alice.get(f"/progress/api/v1/jobs/{job}", headers=auth)
        assert status.status_code == 200 and status.json()["status"] == "success"
        download = alice.get(f"/progress/api/v1/jobs/{job}/result", headers=auth)
        assert download.status_code == 200 and download.text.startswith("row,square\n1,1\n")
        # The page's token watches and downloads; it cannot cancel.
        assert alice.delete(f"/progress/api/v1/jobs/{job}", headers=auth).status_code == 403

        log_in(bob, "bob")
        assert bob.get(page_path).status_code == 404  # not bob's job: no page, no token
        assert bob.get(f"/progress/api/v1/jobs/{job}").status_code == 401
    with httpx.Client(base_url=site.url, timeout=30) as anonymous:
        assert anonymous.get(page_path).headers["location"].startswith("/accounts/login/")


@pytest.mark.browser
def test_the_django_template_shows_the_job_in_chromium(site: Site) -> None:
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        context = browser.new_context()
        context.add_init_script(RECORD_FRAMES)
        context.set_default_timeout(WAIT_MS)
        recorder = PageRecorder(context.new_page())
        recorder.allow(r"favicon\.ico")  # Django's 404 for the browser's own request
        page = recorder.page
        page.goto(f"{site.url}/accounts/login/")
        page.fill("#id_username", "alice")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.fill("input[name=rows]", "10")
        page.click("text=Build a report")
        element = page.locator("job-progress")
        expect(element).to_have_attribute("data-status", "success")
        expect(element.locator(".percent")).to_have_text("100%")
        href = element.locator("a.download").get_attribute("href")
        assert href and href.startswith(f"{site.url}/progress/api/v1/jobs/")
        assert page.evaluate(FETCH, href)["body"].startswith("row,square\n")
        assert recorder.stream_urls and all(
            u.startswith(f"{site.url}/progress/api/v1/jobs/") for u in recorder.stream_urls
        )
        context.close()
        browser.close()
    assert not recorder.unexpected_errors(), recorder.unexpected_errors()
