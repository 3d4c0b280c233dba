"""A user's own Celery app streams: `install(app)` alone, or `task_cls=` alone.

The user project lives in a temporary folder, with its own Celery app (a result backend
included), plain `@app.task(bind=True)` tasks written as the seed's code is (`update_state`
with a string percent, a custom state, extra meta keys), and a task that retries. A real
prefork worker runs it; the stream is read through the real web app.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from progress_streamer.protocol import KeySpace, ProgressEvent, Settings, decode_event
from progress_streamer.redis_server import RedisServer
from tests.support import ROOT
from tests.support.celery_worker import wait_for
from tests.support.server import read_all, running_server

pytestmark = [pytest.mark.worker, pytest.mark.slow]

APP_INSTALL = """
    import os
    from celery import Celery
    from progress_streamer.celery import install

    app = Celery("userproj", broker=os.environ["BROKER"], backend=os.environ["BACKEND"],
                 include=["userproj.tasks"])
    install(app)
"""
APP_TASK_CLS = """
    import os
    from celery import Celery

    app = Celery("userproj", broker=os.environ["BROKER"], backend=os.environ["BACKEND"],
                 include=["userproj.tasks"], task_cls="progress_streamer.celery:ProgressTask")
"""
TASKS = """
    from celery import shared_task

    @shared_task(bind=True, name="userproj.seed")
    def seed(self, n):
        self.update_state(state="DOWNLOADING", meta={"current": 1, "total": 4})
        self.update_state(state="PROGRESS", meta={"percent": "50", "rows_done": 10, "phase": "b"})
        self.update_state(state="PROGRESS", meta={"percent": "half", "message": "almost"})
        return {"n": n}

    @shared_task(bind=True, name="userproj.flaky", max_retries=3)
    def flaky(self):
        if self.request.retries < 1:
            raise self.retry(countdown=1)
        return "ok"
"""


# The user's own code sending a task and waiting on its result, as a separate process
# (its result backend's subscription lives and dies with it).
CLIENT = """
    import json, sys
    import userproj.tasks
    from userproj.celery_app import app

    task = app.tasks[sys.argv[1]]  # as `seed.delay(7)` would, with a queue of the test's
    result = task.apply_async(args=json.loads(sys.argv[3]), queue=sys.argv[2])
    print(json.dumps({"id": result.id, "result": result.get(timeout=30)}))
"""


def user_project(root: Path, app_module: str) -> Path:
    package = root / "userproj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "celery_app.py").write_text(textwrap.dedent(app_module))
    (package / "tasks.py").write_text(textwrap.dedent(TASKS))
    (package / "client.py").write_text(textwrap.dedent(CLIENT))
    return root


@dataclass
class UserProject:
    settings: Settings
    root: Path
    env: dict[str, str]
    queue: str

    def run_task(self, name: str, *args: object) -> tuple[str, object]:
        """Send through the user's own app and `AsyncResult.get()` it; (id, result)."""
        done = subprocess.run(
            [sys.executable, "-m", "userproj.client", name, self.queue, json.dumps(args)],
            cwd=self.root, env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        return answer["id"], answer["result"]


@pytest.fixture(params=["install", "task_cls"])
def user_app(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> Iterator[UserProject]:
    """The user's project and its running worker."""
    app_module = APP_INSTALL if request.param == "install" else APP_TASK_CLS
    root = user_project(tmp_path, app_module)
    queue = f"q-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        redis_url=redis_server.url, key_prefix=f"u{uuid.uuid4().hex[:10]}", auth="none",
        throttle_ms=50,
    )  # fmt: skip
    backend = redis_server.url.rsplit("/", 1)[0] + "/1"
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "PROGRESS_KEY_PREFIX": settings.key_prefix,
        "PROGRESS_THROTTLE_MS": "50",
        "BROKER": settings.redis_url,
        "BACKEND": backend,
        "PYTHONPATH": f"{root}{os.pathsep}{ROOT}",
    }
    log = root / "worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "userproj.celery_app", "worker", "--pool=prefork",
        "--concurrency=1", "-Q", queue, "-n", f"{queue}@%h", "--without-mingle",
        "--without-gossip", "--without-heartbeat", "--loglevel=INFO",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: " ready." in log.read_text(errors="replace"), 30, log.read_text)
        yield UserProject(settings, root, env, queue)
    finally:
        os.killpg(process.pid, 9)
        process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def events_of(settings: Settings, job_id: str) -> list[ProgressEvent]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.lrange(KeySpace(settings.key_prefix).job(job_id).history, 0, -1)
    finally:
        client.close()
    return [decode_event(r) for r in raw]  # type: ignore[union-attr]


async def test_the_seed_idiom_streams_from_a_plain_task_and_get_still_works(
    user_app: UserProject,
) -> None:
    settings = user_app.settings
    job_id, result = user_app.run_task("userproj.seed", 7)
    assert result == {"n": 7}  # the user's result backend still works
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            stream = await read_all(client, f"/api/v1/jobs/{job_id}/events")
    events = [json.loads(e.data) for e in stream.events]
    assert [e["status"] for e in events][-1] == "success"
    history = events_of(settings, job_id)
    assert history[0].status == "pending"  # published by the user's own sending process
    progress = [e for e in history if e.status == "progress"]
    assert progress[0].step == "downloading" and progress[0].percent == 25.0
    assert progress[1].percent == 50.0
    assert progress[1].data == {"rows_done": 10, "phase": "b"}
    assert progress[2].message == "almost" and progress[2].percent is None


async def test_a_retry_is_visible_at_once(user_app: UserProject) -> None:
    settings = user_app.settings
    job_id, result = user_app.run_task("userproj.flaky")
    assert result == "ok"
    # The result backend may answer before the `success` handler has published.
    events = wait_for(
        lambda: (e := events_of(settings, job_id)) and e[-1].is_terminal and e,
        15,
        lambda: str(events_of(settings, job_id)),
    )
    statuses = [(e.status.value, e.attempt) for e in events]
    assert statuses[0] == ("pending", 1) and statuses[-1] == ("success", 2)
    retry = next(e for e in events if e.status == "progress" and e.message)
    assert retry.message == "retrying in 1 s (try 2 of 4)"
    assert retry.attempt == 1


def test_progress_without_any_handler_connected_warns_once(tmp_path: Path) -> None:
    """A task calling `progress()` in a process where nothing was installed is told so,
    once, instead of publishing nothing silently."""
    script = textwrap.dedent("""
        from celery import Celery
        from progress_streamer.celery import progress

        app = Celery("plain", set_as_current=False)

        @app.task(bind=True)
        def work(self):
            progress(percent=1)
            progress(percent=2)

        work.apply()
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no progress_streamer handler is connected") == 1, done.stderr
