"""The progress app mounted in a user's FastAPI or Starlette app under a prefix.

Real uvicorn, real Redis: every URL the app returns carries the mount's prefix (flat,
trailing slash, nested two levels), its streams work to the end through the host, the page
finds its assets relative to itself, and a host that forgot the lifespan line gets a clear
error on the first request instead of a misleading `503 Redis is unavailable`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from fastapi import FastAPI

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web import create_app
from tests.support.host_app import host_app, serving
from tests.support.server import FakeRunner, open_sse, read_all

SECRET = "mount-secret-0123456789-0123456789abcdef"

# (framework, the path given to mount, the prefix every returned URL must start with)
LAYOUTS = [
    ("fastapi", "/progress", "/progress"),
    ("fastapi", "/progress/", "/progress"),
    ("fastapi", "/outer/progress", "/outer/progress"),
    ("starlette", "/progress", "/progress"),
]


@pytest.fixture
def secured(settings: Settings) -> Settings:
    return settings.replace(auth="token", secret=SECRET)


@pytest.fixture
def runner(settings: Settings) -> Iterator[FakeRunner]:
    fake = FakeRunner(settings)
    yield fake
    fake.close()


def composed(progress_app: Any) -> Any:
    """A user's own lifespan with the progress app's entered inside it."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with progress_app.lifespan(app):
            yield

    return lifespan


def statuses(stream: Any) -> list[str]:
    return [json.loads(e.data)["status"] for e in stream.events]


@pytest.mark.parametrize(("framework", "mount", "prefix"), LAYOUTS)
async def test_every_returned_url_carries_the_mount_prefix(
    secured: Settings, runner: FakeRunner, pub: Publisher, framework: str, mount: str, prefix: str
) -> None:
    progress_app = create_app(secured, runners={"celery": runner})
    # The flat mounts pass the app's lifespan as is; the nested one composes it with its own.
    lifespan = composed(progress_app) if mount.count("/") > 2 else progress_app.lifespan
    host = host_app(progress_app, mount, framework=framework, lifespan=lifespan)
    with serving(host) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            answer = await client.post(f"{prefix}/api/v1/jobs", json={"task": "demo.report"})
            assert answer.status_code == 202, answer.text
            body = answer.json()
            job, token = body["job_id"], body["token"]
            base = f"{prefix}/api/v1/jobs/{job}"
            assert answer.headers["location"] == base
            assert (body["status_url"], body["events_url"], body["result_url"]) == (
                base,
                f"{base}/events",
                f"{base}/result",
            )
            status = await client.get(body["status_url"], params={"token": token})
            assert status.status_code == 200 and status.json()["status"] == "pending"

            async with open_sse(client, f"{body['events_url']}?token={token}") as (stream, events):
                assert stream.response.status_code == 200
                first = await anext(events)
                assert json.loads(first.data)["status"] == "pending"
                pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
                pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=50.0))
                pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result={"ok": 1}))
                async for _ in events:
                    pass
            assert stream.ended
            assert statuses(stream) == ["pending", "started", "progress", "success"]

            watch = await client.post(
                f"{prefix}/api/v1/watches", json={"jobs": [{"job_id": job, "token": token}]}
            )
            assert watch.status_code == 201, watch.text
            events_url = watch.json()["events_url"]
            assert events_url == f"{prefix}/api/v1/watches/{watch.json()['watch_id']}/events"
            assert watch.headers["location"] == events_url
            watched = await read_all(client, f"{events_url}?token={watch.json()['token']}")
            assert watched.response.status_code == 200 and statuses(watched) == ["success"]


@pytest.mark.parametrize("framework", ["fastapi", "starlette"])
async def test_without_the_lifespan_line_the_first_request_names_the_fix(
    settings: Settings, pub: Publisher, caplog: pytest.LogCaptureFixture, framework: str
) -> None:
    job = "job-without-lifespan"
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    progress_app = create_app(settings)
    host = host_app(progress_app, "/progress", framework=framework)  # no lifespan given
    caplog.set_level(logging.INFO)
    with serving(host) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            answers = [
                await client.get(f"/progress/api/v1/jobs/{job}"),
                await client.get(f"/progress/api/v1/jobs/{job}/events"),
                await client.get("/progress/readyz"),
            ]
    for answer in answers:
        assert answer.status_code == 500, answer.text
        error = answer.json()["error"]
        assert error["code"] == "internal"
        assert "lifespan did not run" in error["message"]
        assert "lifespan=progress_app.lifespan" in error["message"]
    ours = [r for r in caplog.records if r.name.startswith("progress_streamer")]
    assert [r.levelname for r in ours] == ["ERROR"], [r.getMessage() for r in ours]
    assert "lifespan=progress_app.lifespan" in ours[0].getMessage()


async def test_the_page_finds_its_assets_relative_to_where_it_is_served(
    settings: Settings,
) -> None:
    progress_app = create_app(settings)
    host = host_app(progress_app, "/progress", lifespan=progress_app.lifespan)
    with serving(host) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            bare = await client.get("/progress")  # the host adds the slash the page needs
            assert bare.status_code in (307, 308)
            assert bare.headers["location"].endswith("/progress/")
            page = await client.get("/progress/", follow_redirects=True)
            assert page.status_code == 200
            assets = re.findall(r'(?:href|src)="([^"#:]+)"', page.text)
            assert any(a.endswith("demo.js") for a in assets), assets
            for asset in assets:
                resolved = urljoin("/progress/", asset)
                assert resolved.startswith("/progress/static/"), (asset, resolved)
                assert (await client.get(resolved)).status_code == 200, resolved


async def test_the_lifespan_starts_once_and_requests_after_it_are_refused(
    settings: Settings,
) -> None:
    progress_app = create_app(settings)
    transport = httpx.ASGITransport(app=progress_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        async with progress_app.lifespan(None):
            hub = progress_app.state.services.hub._task
            async with progress_app.lifespan(None):  # the host's and the app's own
                assert progress_app.state.services.hub._task is hub  # not started twice
                assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200  # the inner exit stops nothing
        after = await client.get("/readyz")
    assert after.status_code == 503
    assert after.json()["error"] == {
        "code": "not_ready",
        "message": "the progress app is stopped (its lifespan ended)",
    }


def test_included_routes_fail_with_a_clear_error_naming_the_mount(settings: Settings) -> None:
    progress_app = create_app(settings)
    api = FastAPI()
    api.router.routes.extend(progress_app.routes)  # "including" the routes, not mounting
    transport = httpx.ASGITransport(app=api)

    async def ask() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.get("/readyz")

    with pytest.raises(RuntimeError, match=r"mount"):
        asyncio.run(ask())
