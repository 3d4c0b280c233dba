"""`POST /api/v1/jobs` with a group: one parent job over HTTP, on a real Celery worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from progress_streamer.protocol.publisher import PublishOutcome
from progress_streamer.protocol.runner import ChildJob
from progress_streamer.redis_server import RedisServer
from progress_streamer.web import JobRunner
from tests.support.celery_worker import Worker, running_worker
from tests.support.server import FakeRunner, read_all, running_server

pytestmark = pytest.mark.worker

SECRET = "groups-secret-" + "0123456789" * 3


class Borrowed(JobRunner):
    """The worker fixture's runner, lent to the app (which must not close it)."""

    def __init__(self, worker: Worker) -> None:
        self.runner = worker.runner

    def enqueue(self, job_id: str, task: str, params: dict[str, Any]) -> None:
        self.runner.enqueue(job_id, task, params)

    def enqueue_family(
        self, parent_id: str, kind: str, children: list[ChildJob], fail_fast: bool
    ) -> None:
        self.runner.enqueue_family(parent_id, kind, children, fail_fast)

    def cancel(self, job_id: str) -> PublishOutcome:
        return self.runner.cancel(job_id)


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    with running_worker(redis_server.url, concurrency=4) as running:
        yield running


def report(steps: int = 3) -> dict[str, Any]:
    return {"task": "demo.report", "params": {"steps": steps, "step_ms": 5}}


async def test_a_group_streams_as_one_job_and_its_token_opens_the_children(
    worker: Worker,
) -> None:
    settings = worker.settings.replace(auth="token", secret=SECRET)
    with running_server(settings, {"celery": Borrowed(worker)}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            answer = await client.post("/api/v1/jobs", json={"group": [report()] * 5})
            assert answer.status_code == 202, answer.text
            created = answer.json()
            assert created["kind"] == "group" and len(created["children"]) == 5
            auth = {"Authorization": f"Bearer {created['token']}"}
            stream = await read_all(client, created["events_url"], headers=auth)
            events = [json.loads(e.data) for e in stream.events]
            assert events[-1]["status"] == "success"
            assert events[-1]["children"]["succeeded"] == 5
            status = (await client.get(created["status_url"], headers=auth)).json()
            assert status["children"]["total"] == 5
            assert status["child_ids"] == [c["job_id"] for c in created["children"]]
            child = created["children"][0]
            seen = await client.get(child["status_url"], headers=auth)  # the parent's token
            assert seen.status_code == 200 and seen.json()["status"] == "success"
            other = await client.post("/api/v1/jobs", json=report())
            foreign = {"Authorization": f"Bearer {other.json()['token']}"}
            assert (await client.get(child["status_url"], headers=foreign)).status_code == 403
            watch = await client.post(
                "/api/v1/watches",
                json={"jobs": [{"job_id": c["job_id"], "token": created["token"]}
                               for c in created["children"]]},
            )  # fmt: skip
            assert watch.status_code == 201, watch.text


async def test_deleting_the_parent_revokes_every_unfinished_child(worker: Worker) -> None:
    with running_server(worker.settings, {"celery": Borrowed(worker)}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            slow = {"task": "demo.report", "params": {"steps": 100, "step_ms": 200}}
            created = (await client.post("/api/v1/jobs", json={"group": [slow] * 6})).json()
            cancelled = await client.delete(created["status_url"])
            assert cancelled.status_code == 202, cancelled.text
            end = (await client.get(created["status_url"])).json()
            assert end["status"] == "revoked"
            assert end["children"]["revoked"] == 6
            for child in created["children"]:
                assert worker.statuses(child["job_id"]).count("revoked") == 1
            again = await client.delete(created["status_url"])
            assert again.status_code == 409


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        ({"group": [report(), {"task": "nope"}]}, "unknown_task", "child 1"),
        ({"group": [report(), report(), {"task": "demo.report", "params": {"steps": 0}}]},
         "invalid_params", "child 2"),
        ({"group": [report()], "then": {"task": "demo.report", "params": {"x": 1}}},
         "invalid_params", "then"),
        ({"chain": [report(), 7]}, "invalid_params", "child 1"),
        ({"group": []}, "invalid_params", "non-empty"),
        ({"group": [report()], "fail_fast": "yes"}, "invalid_params", "fail_fast"),
        ({"chain": [report()], "then": report()}, "invalid_params", "then"),
        ({"group": [report()] * 4}, "invalid_params", "PROGRESS_MAX_CHILDREN"),
        ({"group": [report()], "runner": "arq"}, "unknown_task", "runner"),
    ],
)  # fmt: skip
async def test_a_bad_family_is_refused_whole_naming_what_is_wrong(
    worker: Worker, body: dict[str, Any], code: str, names: str
) -> None:
    settings = worker.settings.replace(max_children=3)
    fake = FakeRunner(settings)
    with running_server(settings, {"celery": fake}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            answer = await client.post("/api/v1/jobs", json=body)
    fake.close()
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and names in error["message"]
    assert fake.enqueued == []


async def test_a_runner_without_families_answers_422(worker: Worker) -> None:
    fake = FakeRunner(worker.settings)
    with running_server(worker.settings, {"celery": fake}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            answer = await client.post("/api/v1/jobs", json={"chain": [report(), report()]})
    fake.close()
    assert answer.status_code == 422
    assert "runs no chain" in answer.json()["error"]["message"]
