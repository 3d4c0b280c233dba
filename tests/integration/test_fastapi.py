"""docs/fastapi.md, end to end: the doc's own files as a user's project in a temporary folder
(`myproj/celery_app.py`, `myproj/main.py`), served by uvicorn as the doc says, with a real
prefork Celery worker of that project, on the session's Redis.

A job started from the user's own route (`export.delay`) streams to `success` through the
mounted progress app at `/progress/api/v1/jobs/<id>/events`, with the token the user's
page route minted; the progress app's services started from the one lifespan line.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from progress_streamer.redis_server import RedisServer, free_port
from tests.support import ROOT
from tests.support.doc_project import Process, answers, write_doc_project
from tests.support.server import read_events

pytestmark = [pytest.mark.worker, pytest.mark.slow]

DOC = ROOT / "docs" / "fastapi.md"
SECRET = "fastapi-doc-secret-0123456789-0123456789abc"
ELEMENT = re.compile(r'<job-progress job="([\w-]+)" token="([\w.-]+)"></job-progress>')


class Project:
    """The doc's app under uvicorn and its Celery worker, in `folder`."""

    def __init__(self, folder: Path, redis_server: RedisServer) -> None:
        self.port = free_port()
        env = {
            "PYTHONPATH": str(folder),
            "REDIS_URL": redis_server.url,
            # The project's own broker database: its worker takes Celery's default queue,
            # which other tests' workers use on database 0.
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/7",
            "PROGRESS_KEY_PREFIX": f"fa{uuid.uuid4().hex[:10]}",
            "PROGRESS_SECRET": SECRET,
            "PROGRESS_THROTTLE_MS": "50",
        }
        env = {**os.environ, **env}
        web = [
            sys.executable, "-m", "uvicorn", "myproj.main:api", "--http", "httptools",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        worker = [
            sys.executable, "-m", "celery", "-A", "myproj.celery_app", "worker",
            "--pool=prefork", "--concurrency=1", "--loglevel=INFO",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
        ]  # fmt: skip
        self.web = Process("web", web, cwd=folder, env=env)
        self.worker = Process("worker", worker, cwd=folder, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        self.web.wait_until(lambda: answers(f"{self.url}/progress/healthz"))
        self.worker.wait_until(lambda: " ready." in self.worker.log())

    def stop(self) -> None:
        self.worker.stop()
        self.web.stop()


@pytest.fixture(scope="module")
def project(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    folder = tmp_path_factory.mktemp("myproj")
    expected = {"myproj/celery_app.py", "myproj/main.py"}
    write_doc_project(DOC, folder, expected, {"myproj/__init__.py": ""})
    project = Project(folder, redis_server)
    try:
        project.wait_ready()
        yield project
    except BaseException:
        print(project.web.log()[-3000:], project.worker.log()[-3000:])
        raise
    finally:
        project.stop()


def test_a_job_from_the_users_route_streams_through_the_mount(project: Project) -> None:
    with httpx.Client(base_url=project.url, timeout=30) as client:
        # The lifespan line ran: the mounted app's Redis subscription answers.
        assert client.get("/progress/readyz").status_code == 200
        started = client.post("/exports", params={"n": 30})
        assert started.status_code == 303, started.text
        page_path = started.headers["location"]
        page = client.get(page_path)
        assert page.status_code == 200
        found = ELEMENT.search(page.text)
        assert found, page.text
        job, token = found.groups()
        assert page_path == f"/exports/{job}"

        events = read_events(client, f"/progress/api/v1/jobs/{job}/events?token={token}")
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        assert events[-1]["status"] == "success", events[-1]
        assert events[-1]["result"] == {"rows": 30, "filename": "export.csv"}
        assert any(e["status"] == "progress" and e["step"] == "exporting" for e in events)

        result = client.get(f"/progress/api/v1/jobs/{job}/result", params={"token": token})
        assert result.status_code == 200 and result.text.startswith("i,square\n1,1\n")
        demo = client.get("/progress/")
        assert demo.status_code == 200 and 'src="static/demo.js"' in demo.text
