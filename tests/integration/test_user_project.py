"""A new user's project, with the library installed from its wheel (issue 13's test).

The project lives in a temporary folder: its own FastAPI app as `app/main.py` (the
progress app mounted at `/progress`, its lifespan the host's), its own Celery app with a
result backend and `install(app)`, a task written as the seed's code is (`update_state`
with a string percent, a custom state, extra meta keys), one using `self.progress` and
`attach_file`, and a page with `<job-progress>` and no `base-url`. Its web process and
its prefork worker run on the new venv's interpreter, which sees the wheel's package
and none of the repository; the page runs in Chromium.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from playwright.sync_api import expect, sync_playwright

from progress_streamer.protocol import KeySpace, ProgressEvent, decode_event
from progress_streamer.protocol.settings import Settings
from progress_streamer.redis_server import RedisServer, free_port
from tests.packaging.test_wheel import InstalledVenv, clean_env, venv, wheel  # noqa: F401
from tests.support.browser import CHROMIUM, LAUNCH_ARGS
from tests.support.celery_worker import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.browser, pytest.mark.slow]

SECRET = "user-project-secret-0123456789abcdef"
FILES = {
    "userproj/__init__.py": "",
    "userproj/celery_app.py": """
        import os
        from celery import Celery
        from progress_streamer.celery import install

        app = Celery("userproj", broker=os.environ["BROKER"], backend=os.environ["BACKEND"],
                     include=["userproj.tasks"])
        install(app)
    """,
    "userproj/tasks.py": """
        from celery import shared_task
        from progress_streamer.celery import ProgressTask

        @shared_task(bind=True, name="userproj.seed")
        def seed(self, n):
            self.update_state(state="DOWNLOADING", meta={"current": 1, "total": 4})
            self.update_state(state="PROGRESS", meta={"percent": "50", "rows_done": n})
            return {"n": n}

        @shared_task(bind=True, base=ProgressTask, name="userproj.export")
        def export(self, n):
            for i in range(n):
                self.progress(step="exporting", percent=100 * (i + 1) / n, current=i + 1, total=n)
            self.attach_file("export.csv", b"a,b\\r\\n1,2\\r\\n", "text/csv")
            return {"rows": n, "filename": "export.csv"}
    """,
    "userproj/client.py": """
        import json, sys
        from celery.result import AsyncResult
        from userproj.celery_app import app

        print(json.dumps(AsyncResult(sys.argv[1], app=app).get(timeout=30)))
    """,
    "app/__init__.py": "",
    "app/main.py": """
        from fastapi import FastAPI
        from fastapi.responses import HTMLResponse
        from progress_streamer.celery import CeleryRunner
        from progress_streamer.web import IntParam, Settings, TaskSpec, create_app, default_catalog

        from userproj.celery_app import app as celery_app

        settings = Settings.from_env()
        n = IntParam(name="n", minimum=1, maximum=1000, default=3)
        catalog = default_catalog().with_tasks(
            [TaskSpec(name=name, params=(n,)) for name in ("userproj.seed", "userproj.export")]
        )
        progress_app = create_app(
            settings, catalog=catalog, runners={"celery": CeleryRunner(settings, app=celery_app)}
        )
        api = FastAPI(lifespan=progress_app.lifespan)
        api.mount("/progress", progress_app)


        @api.get("/jobs/{job_id}", response_class=HTMLResponse)
        def job_page(job_id: str, token: str) -> str:
            return (
                '<!doctype html><meta charset="utf-8"><title>Export</title>'
                '<script type="module" src="/progress/static/progress.js"></script>'
                f'<h1>Your export</h1><job-progress job="{job_id}" token="{token}"></job-progress>'
            )
    """,
}


@dataclass(frozen=True, slots=True)
class Project:
    root: Path
    url: str
    python: Path
    env: dict[str, str]


def write_project(root: Path) -> None:
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def project(
    venv: InstalledVenv,  # noqa: F811
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("user_project_e2e")
    write_project(root)
    port = free_port()
    settings = Settings(redis_url=redis_server.url, key_prefix=f"p{uuid.uuid4().hex[:8]}")
    env = {
        **clean_env(),
        "REDIS_URL": settings.redis_url,
        "PROGRESS_KEY_PREFIX": settings.key_prefix,
        "PROGRESS_SECRET": SECRET,
        "BROKER": settings.redis_url,
        "BACKEND": redis_server.url.rsplit("/", 1)[0] + "/2",
    }
    log = root / "processes.log"
    with log.open("wb") as out:
        web = subprocess.Popen(
            [venv.python, "-m", "uvicorn", "app.main:api", "--port", str(port)],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        worker = subprocess.Popen(
            [venv.python, "-m", "celery", "-A", "userproj.celery_app", "worker",
             "--pool=prefork", "--concurrency=1", "--without-mingle", "--without-gossip",
             "--loglevel=INFO", "-n", f"user-{port}@%h"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: listening(port) and " ready." in log.read_text(), 60, log.read_text)
        yield Project(root, f"http://127.0.0.1:{port}", venv.python, env)
    finally:
        web.terminate()
        os.killpg(worker.pid, 9)
        web.wait(timeout=10)
        worker.wait(timeout=10)


def enqueue(project: Project, task: str, n: int) -> dict[str, str]:
    answer = httpx.post(
        f"{project.url}/progress/api/v1/jobs", json={"task": task, "params": {"n": n}}
    )
    assert answer.status_code == 202, answer.text
    body: dict[str, str] = answer.json()
    assert answer.headers["location"].startswith("/progress/api/v1/jobs/")
    for name in ("status_url", "events_url", "result_url"):
        assert body[name].startswith("/progress/api/v1/jobs/"), body
    return body


def stream(project: Project, job: dict[str, str]) -> list[dict[str, object]]:
    url = f"{project.url}{job['events_url']}"
    events = []
    with httpx.stream("GET", url, params={"token": job["token"]}, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_the_seed_idiom_streams_through_the_mount_and_get_still_works(project: Project) -> None:
    job = enqueue(project, "userproj.seed", 7)
    events = stream(project, job)
    assert events[-1]["status"] == "success" and events[-1]["result"] == {"n": 7}
    got = subprocess.run(
        [project.python, "-m", "userproj.client", job["job_id"]],
        cwd=project.root, env=project.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout.strip().splitlines()[-1]) == {"n": 7}
    progress = [e for e in history_of(project, job["job_id"]) if e.status == "progress"]
    assert progress[0].step == "downloading" and progress[-1].percent == 50.0
    assert progress[-1].data == {"rows_done": 7}


def history_of(project: Project, job_id: str) -> list[ProgressEvent]:
    client = redis.Redis.from_url(project.env["REDIS_URL"])
    try:
        keys = KeySpace(project.env["PROGRESS_KEY_PREFIX"]).job(job_id)
        return [decode_event(raw) for raw in client.lrange(keys.history, 0, -1)]  # type: ignore[union-attr]
    finally:
        client.close()


def test_a_page_with_job_progress_reaches_100_and_downloads(project: Project) -> None:
    job = enqueue(project, "userproj.export", 200)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{project.url}/jobs/{job['job_id']}?token={job['token']}")
            element = page.locator("job-progress")
            expect(element.locator(".progress-view")).to_have_attribute(
                "data-status", "success", timeout=60_000
            )
            expect(element.locator(".percent")).to_have_text("100%")
            link = element.locator("a.download")
            href = link.get_attribute("href")
            assert href and "/progress/api/v1/jobs/" in href
            with page.expect_download() as download:
                link.click()
            assert download.value.suggested_filename == "export.csv"
        finally:
            browser.close()
