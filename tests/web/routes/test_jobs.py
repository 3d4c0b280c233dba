"""The JSON API: enqueue, status, cancel, result, errors, health, metrics, pages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.files import file_fields
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.routes.jobs import content_disposition
from tests.support.server import FakeRunner, ServerThread, running_server

# Each test runs on one Redis and again on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.both_redis_modes


@pytest.fixture
def runner(settings: Settings) -> Iterator[FakeRunner]:
    fake = FakeRunner(settings)
    yield fake
    fake.close()


@pytest.fixture
def server(settings: Settings, runner: FakeRunner) -> Iterator[ServerThread]:
    with running_server(settings, {"celery": runner}) as server:
        yield server


@pytest.fixture
async def client(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


async def enqueue(client: httpx.AsyncClient, **body: object) -> httpx.Response:
    return await client.post("/api/v1/jobs", json={"task": "demo.report", **body})


async def test_post_enqueues_by_name_and_answers_202(
    client: httpx.AsyncClient, runner: FakeRunner
) -> None:
    response = await enqueue(client, params={"steps": 3})
    assert response.status_code == 202
    body = response.json()
    job = body["job_id"]
    assert body == {
        "job_id": job,
        "status": "pending",
        "status_url": f"/api/v1/jobs/{job}",
        "events_url": f"/api/v1/jobs/{job}/events",
        "result_url": f"/api/v1/jobs/{job}/result",
        "token": None,
    }
    assert response.headers["location"] == f"/api/v1/jobs/{job}"
    assert runner.enqueued == [(job, "demo.report", {"steps": 3, "step_ms": 200})]
    status = (await client.get(f"/api/v1/jobs/{job}")).json()
    assert status == {
        "job_id": job,
        "status": "pending",
        "attempt": 1,
        "progress": None,
        "result": None,
        "error": None,
        "seq": 1,
    }


async def test_post_errors(client: httpx.AsyncClient, settings: Settings) -> None:
    cases = [
        ({"task": "nope"}, 422, "unknown_task"),
        ({"task": "demo.report", "runner": "rq"}, 422, "unknown_task"),
        ({"task": "demo.report", "runner": "arq"}, 422, "unknown_task"),  # not in this process
        ({"task": "demo.report", "params": {"steps": 0}}, 422, "invalid_params"),
        ({"task": "demo.report", "params": {"colour": 1}}, 422, "invalid_params"),
        ({"task": "demo.report", "params": []}, 422, "invalid_params"),
    ]
    for body, status, code in cases:
        response = await client.post("/api/v1/jobs", json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    bad = await client.post("/api/v1/jobs", content=b"{nope")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_json")
    big = await client.post("/api/v1/jobs", content=b" " * (settings.max_body_bytes + 1))
    assert (big.status_code, big.json()["error"]["code"]) == (413, "payload_too_large")


async def test_the_api_key_guards_enqueueing(settings: Settings, runner: FakeRunner) -> None:
    with running_server(settings.replace(api_key="k3y"), {"celery": runner}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = {"task": "demo.fail"}
            missing = await client.post("/api/v1/jobs", json=body)
            wrong = await client.post(
                "/api/v1/jobs", json=body, headers={"Authorization": "Bearer nope"}
            )
            right = await client.post(
                "/api/v1/jobs", json=body, headers={"Authorization": "Bearer k3y"}
            )
    assert [missing.status_code, wrong.status_code, right.status_code] == [401, 401, 202]
    assert missing.json()["error"]["code"] == "unauthorized"


async def test_status_shows_progress_result_and_error(
    client: httpx.AsyncClient, pub: Publisher
) -> None:
    job = "job-1_" + KeySpace("x").prefix
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    pub.publish(
        EventDraft(job_id=job, status=JobStatus.PROGRESS, step="rendering", percent=75.0, current=3,
                   total=4, message="page 3")
    )  # fmt: skip
    body = (await client.get(f"/api/v1/jobs/{job}")).json()
    assert body["progress"] == {
        "step": "rendering", "percent": 75.0, "current": 3, "total": 4, "message": "page 3",
    }  # fmt: skip
    assert (body["status"], body["seq"]) == ("progress", 2)
    unknown = await client.get("/api/v1/jobs/nosuchjob")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


async def test_delete_cancels_then_conflicts(client: httpx.AsyncClient) -> None:
    job = (await enqueue(client)).json()["job_id"]
    first = await client.delete(f"/api/v1/jobs/{job}")
    assert first.status_code == 202
    assert (await client.get(f"/api/v1/jobs/{job}")).json()["status"] == "revoked"
    again = await client.delete(f"/api/v1/jobs/{job}")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict")
    assert (await client.delete("/api/v1/jobs/nosuchjob")).status_code == 404


async def test_result_download(
    client: httpx.AsyncClient, pub: Publisher, sync_redis: redis.Redis, keyspace: KeySpace
) -> None:
    job = "report1"
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    running = await client.get(f"/api/v1/jobs/{job}/result")
    assert (running.status_code, running.json()["error"]["code"]) == (409, "conflict")
    pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result={"rows": 2}))
    assert (await client.get(f"/api/v1/jobs/{job}/result")).status_code == 404
    sync_redis.hset(
        keyspace.job(job).file, mapping=file_fields("rapport é.csv", b"a,b\n1,2\n", "text/csv")
    )
    response = await client.get(f"/api/v1/jobs/{job}/result")
    assert response.status_code == 200
    assert response.content == b"a,b\n1,2\n"
    assert response.headers["content-length"] == "8"
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"rapport _.csv\"; filename*=UTF-8''rapport%20%C3%A9.csv"
    )


def test_filenames_are_sanitised() -> None:
    assert content_disposition('../../etc/pa"ss\r\nwd') == 'attachment; filename="passwd"'
    assert content_disposition("") == 'attachment; filename="result"'


async def test_every_error_is_json(client: httpx.AsyncClient) -> None:
    not_found = await client.get("/nope")
    assert not_found.json() == {"error": {"code": "not_found", "message": "Not Found"}}
    method = await client.put("/api/v1/jobs")
    assert (method.status_code, method.json()["error"]["code"]) == (405, "method_not_allowed")
    assert method.headers["referrer-policy"] == "no-referrer"


async def test_health_ready_metrics_and_pages(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    for name in (
        "progress_open_streams", "progress_watched_jobs", "progress_events_relayed_total",
        "progress_frames_coalesced_total", "progress_slow_clients_dropped_total",
        "progress_redis_reconnects_total",
    ):  # fmt: skip
        assert name in metrics.text
    index = await client.get("/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert (await client.get("/static/progress.js")).status_code == 200


async def test_readyz_is_503_when_redis_does_not_answer(settings: Settings) -> None:
    down = settings.replace(redis_url="redis://127.0.0.1:1/0")
    with running_server(down) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            response = await client.get("/readyz")
            assert (response.status_code, response.json()["error"]["code"]) == (503, "not_ready")
            assert (await client.get("/healthz")).status_code == 200


async def test_cors_only_for_listed_origins(settings: Settings) -> None:
    cors = settings.replace(cors_origins=("https://app.example",))
    with running_server(cors) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            ok = await client.get("/healthz", headers={"Origin": "https://app.example"})
            evil = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in evil.headers


class BrokenRunner(FakeRunner):
    def enqueue(self, job_id: str, task: str, params: dict[str, object]) -> None:
        raise RuntimeError("the broker is on fire at /secret/path")


async def test_an_unhandled_error_is_a_json_500_without_details(settings: Settings) -> None:
    runner = BrokenRunner(settings)
    try:
        with running_server(settings, {"celery": runner}) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                response = await enqueue(client)
    finally:
        runner.close()
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert response.headers["referrer-policy"] == "no-referrer"
