"""Per-job and per-watch tokens: 401/403, mint_token, and no token in the access log."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from progress_streamer.protocol.settings import Settings, SettingsError
from progress_streamer.web import create_app
from progress_streamer.web.tokens import JOB_SALT, TokenSigner, job_signer, mint_token
from tests.support.server import FakeRunner, ServerThread, read_all, running_server

SECRET = "test-secret-0123456789-0123456789abcdef"


@pytest.fixture
def secured(settings: Settings) -> Settings:
    return settings.replace(auth="token", secret=SECRET)


@pytest.fixture
def server(secured: Settings) -> Iterator[ServerThread]:
    runner = FakeRunner(secured)
    with running_server(secured, {"celery": runner}) as server:
        yield server
    runner.close()


@pytest.fixture
async def client(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


async def test_every_job_endpoint_needs_the_jobs_token(client: httpx.AsyncClient) -> None:
    created = (await client.post("/api/v1/jobs", json={"task": "demo.report"})).json()
    job, token = created["job_id"], created["token"]
    other = (await client.post("/api/v1/jobs", json={"task": "demo.report"})).json()
    assert token and token not in created["events_url"]
    paths = [f"/api/v1/jobs/{job}", f"/api/v1/jobs/{job}/events", f"/api/v1/jobs/{job}/result"]
    for path in paths:
        for headers, params, status in [
            ({}, {}, 401),
            ({}, {"token": "garbage"}, 401),
            ({}, {"token": token[:-2] + ("yy" if token.endswith("xx") else "xx")}, 401),  # forged
            ({"Authorization": f"Bearer {other['token']}"}, {}, 403),
            ({}, {"token": other["token"]}, 403),
        ]:
            response = await client.get(path, headers=headers, params=params)
            assert response.status_code == status, (path, headers, params)
            code = "unauthorized" if status == 401 else "forbidden"
            assert response.json()["error"]["code"] == code
    ok = await client.get(f"/api/v1/jobs/{job}", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    assert (await client.get(f"/api/v1/jobs/{job}", params={"token": token})).status_code == 200
    # An unknown job with another job's valid token: the same 403, existence not revealed.
    unknown = await client.get(f"/api/v1/jobs/{uuid.uuid4().hex}", params={"token": token})
    assert unknown.status_code == 403
    deleted = await client.delete(f"/api/v1/jobs/{job}", params={"token": other["token"]})
    assert deleted.status_code == 403


async def test_minted_tokens_work_and_expire(secured: Settings, client: httpx.AsyncClient) -> None:
    job = (await client.post("/api/v1/jobs", json={"task": "demo.report"})).json()["job_id"]
    token = mint_token(secured, job)
    assert (await client.get(f"/api/v1/jobs/{job}", params={"token": token})).status_code == 200
    with pytest.raises(SettingsError, match="PROGRESS_SECRET"):
        mint_token(secured.replace(secret=None), job)
    signer_settings = secured.replace(token_ttl=1)
    old = mint_token(signer_settings, job)
    assert job_signer(signer_settings).verify(old, job).verdict.value == "granted"
    expired = job_signer(signer_settings)
    expired.ttl = -1
    assert expired.verify(old, job).verdict.value == "invalid"


async def test_tokens_never_reach_the_access_log(secured: Settings) -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect()
    access = logging.getLogger("uvicorn.access")
    runner = FakeRunner(secured)
    try:
        server = ServerThread(secured, {"celery": runner})
        server.server.config.access_log = True
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                created = (await client.post("/api/v1/jobs", json={"task": "demo.fail"})).json()
                token = created["token"]
                await client.get(created["status_url"], params={"token": token})
                await client.delete(created["status_url"], params={"token": token, "x": "1"})
                await read_all(client, created["events_url"] + f"?token={token}")
        finally:
            server.stop()
    finally:
        access.removeHandler(handler)
        runner.close()
    assert any("?REDACTED" in line for line in records), records
    assert not any(token in line for line in records)


@pytest.mark.parametrize("secret", [None, "", "x" * 31, "é" * 15])
def test_no_public_entry_signs_or_checks_with_a_weak_secret(
    settings: Settings, secret: str | None
) -> None:
    """Regression: `create_app(settings)` once signed tokens with an empty key, so a
    token forged with `URLSafeTimedSerializer('', salt='progress.job')` read any job."""
    weak = settings.replace(auth="token", secret=secret)
    with pytest.raises(SettingsError, match="PROGRESS_SECRET"):
        create_app(weak)
    with pytest.raises(SettingsError, match="PROGRESS_SECRET"):
        mint_token(weak, "job-1")
    with pytest.raises(SettingsError, match="PROGRESS_SECRET"):
        job_signer(weak)
    with pytest.raises(SettingsError, match="PROGRESS_SECRET"):
        TokenSigner(secret, JOB_SALT, 60)


def test_a_secret_of_32_bytes_is_enough_and_auth_off_needs_none(settings: Settings) -> None:
    create_app(settings.replace(auth="token", secret="s" * 32))
    create_app(settings.replace(auth="none", secret=None))
