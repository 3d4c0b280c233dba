"""Authorization under attack (issue 6, item 9); tests/web/test_tokens.py has the basics.

- Every job and watch endpoint, with no token, a garbage, forged, expired, wrong-purpose
  or wrong-secret token, or another job's token, in the query or as a Bearer header: 401
  or 403, with the same answer whether the job exists or not.
- No token reaches any log record of the process, however the query spells its name.
- CORS: off unless configured; a configured list never echoes another origin.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.tokens import (
    JOB_SALT,
    WATCH_SALT,
    Verdict,
    job_signer,
    mint_token,
    watch_signer,
)
from tests.support.reliability import report, until
from tests.support.server import FakeRunner, ServerThread, publisher, read_all, running_server

SECRET = "auth-secret-0123456789-0123456789abcdef"


class _PastSigner(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 10 * 86400


def expired_token(scope_id: str, salt: str = JOB_SALT) -> str:
    token = URLSafeTimedSerializer(SECRET, salt=salt, signer=_PastSigner).dumps(scope_id)
    assert isinstance(token, str)
    return token


def forged(token: str) -> str:
    """The same payload and timestamp with the signature's first character changed (not its
    last: base64's spare low bits there may decode to the very same signature)."""
    head, _, signature = token.rpartition(".")
    return f"{head}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"


@pytest.fixture
def secured(settings: Settings) -> Settings:
    return settings.replace(auth="token", secret=SECRET)


@pytest.fixture
def server(secured: Settings) -> Iterator[ServerThread]:
    runner = FakeRunner(secured)
    with running_server(secured, {"celery": runner}) as server:
        yield server
    runner.close()


async def test_every_endpoint_refuses_bad_tokens_identically_for_known_and_unknown_jobs(
    secured: Settings, server: ServerThread
) -> None:
    pub = publisher(secured)
    known, other = uuid.uuid4().hex, uuid.uuid4().hex
    for job in (known, other):
        pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    pub.redis.close()
    unknown = uuid.uuid4().hex
    jobs, watches = job_signer(secured), watch_signer(secured)
    stranger = URLSafeTimedSerializer("another-" + "0123456789" * 4, salt=JOB_SALT).dumps(known)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        created = await client.post(
            "/api/v1/watches", json={"jobs": [{"job_id": known, "token": jobs.mint(known)}]}
        )
        assert created.status_code == 201
        watch = created.json()["watch_id"]
        unknown_watch = uuid.uuid4().hex
        variants: list[tuple[str, str | None, int]] = [
            ("none", None, 401),
            ("empty", "", 401),
            ("garbage", "not-a-token", 401),
            ("forged", "{forged}", 401),
            ("expired", "{expired}", 401),
            ("other secret", stranger, 401),
            ("wrong purpose", "{purpose}", 401),
            ("a job token on a watch", jobs.mint(other), 401),
            ("another job's or watch's", "{other}", 403),
        ]
        tried = 0
        for kind in ("job", "watch"):
            target, missing = (known, unknown) if kind == "job" else (watch, unknown_watch)
            signer, salt = (jobs, JOB_SALT) if kind == "job" else (watches, WATCH_SALT)
            if kind == "job":
                endpoints = [("GET", ""), ("GET", "/events"), ("GET", "/result"), ("DELETE", "")]
                base = "/api/v1/jobs/"
            else:
                endpoints, base = [("GET", "/events")], "/api/v1/watches/"
            for method, tail in endpoints:
                for label, template, expected in variants:
                    answers = []
                    for scope in (target, missing):
                        token = _token(template, signer, salt, target, scope, kind)
                        for bearer in (False, True):
                            response = await _ask(
                                client, method, base + scope + tail, token, bearer
                            )
                            tried += 1
                            answers.append((response.status_code, response.content))
                    if label == "a job token on a watch":
                        expected = 403 if kind == "job" else 401  # for a job: another job's
                    assert {a[0] for a in answers} == {expected}, (kind, method, tail, label)
                    assert len({a[1] for a in answers}) == 1, (kind, method, tail, label, answers)
                    assert answers[0][1].startswith(b'{"error":'), answers[0]
    report("auth/matrix", requests=tried, variants=[v[0] for v in variants])


def _token(
    template: str | None,
    signer: object,
    salt: str,
    target: str,
    scope: str,
    kind: str,
) -> str | None:
    """The variant's token for a request on `scope` (the existing or the missing one)."""
    if template == "{forged}":
        return forged(signer.mint(scope))  # type: ignore[attr-defined]
    if template == "{expired}":
        return expired_token(scope, salt)
    if template == "{other}":  # valid, for another job or watch
        return signer.mint(uuid.uuid4().hex)  # type: ignore[attr-defined]
    if template == "{purpose}":  # a valid token of the other kind for the same id
        other_salt = WATCH_SALT if kind == "job" else JOB_SALT
        return URLSafeTimedSerializer(SECRET, salt=other_salt).dumps(scope)
    return template


async def _ask(
    client: httpx.AsyncClient, method: str, path: str, token: str | None, bearer: bool
) -> httpx.Response:
    headers, params = {}, {}
    if token is not None:
        if bearer:
            headers["Authorization"] = f"Bearer {token}".strip()
        else:
            params["token"] = token
    return await client.request(method, path, headers=headers, params=params)


async def test_no_token_reaches_any_log_record(secured: Settings) -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not record.name.startswith(("httpx", "httpcore")):  # the test's own client
                records.append(self.format(record))

    handler = Collect(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s %(exc_text)s"))
    root = logging.getLogger()
    loggers = [root, logging.getLogger("uvicorn.access"), logging.getLogger("uvicorn.error")]
    levels = [lg.level for lg in loggers]
    runner = FakeRunner(secured)
    tokens: list[str] = []
    try:
        server = ServerThread(secured, {"celery": runner})
        server.server.config.access_log = True
        for lg in loggers:
            lg.addHandler(handler)
            lg.setLevel(logging.DEBUG)
        server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                created = (await client.post("/api/v1/jobs", json={"task": "demo.fail"})).json()
                token = created["token"]
                tokens.append(token)
                status = created["status_url"]
                # However the query spells the parameter, the server reads it as `token`.
                for query in (
                    f"token={token}",
                    f"%74oken={token}",
                    f"x=1&TOKEN={token}",
                    f"token={token}&token={token}",
                    f"to%6Ben={token}&x=%3F",
                    f"a=1;token={token}",
                    f"token[]={token}",
                ):
                    await client.get(f"{status}?{query}")
                await client.get(status, headers={"Authorization": f"Bearer {token}"})
                await client.delete(f"{status}?token={token}")
                await read_all(client, f"{created['events_url']}?%74oken={token}")
                await client.get(f"/api/v1/jobs/not*valid?token={token}")
        finally:
            server.stop()
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        runner.close()
    access = [r for r in records if r.startswith("uvicorn.access")]
    assert len(access) >= 9, records
    leaked = [r for r in records if any(t in r for t in tokens)]
    report("auth/logs", log_records=len(records), access_lines=len(access), leaked=len(leaked))
    assert not leaked, leaked


async def test_cors_is_off_unless_configured_and_never_echoes_other_origins(
    settings: Settings,
) -> None:
    evil = [
        "https://evil.example",
        "null",
        "https://app.example.evil.example",
        "http://app.example",
        "https://app.example:8443",
        "HTTPS://APP.EXAMPLE.",
        "*",
    ]
    preflight = {"Access-Control-Request-Method": "GET"}
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for origin in [*evil, "https://app.example"]:
                for response in (
                    await client.get("/healthz", headers={"Origin": origin}),
                    await client.options("/api/v1/jobs", headers={"Origin": origin, **preflight}),
                ):
                    assert not any(h.startswith("access-control-") for h in response.headers)
    cors = settings.replace(cors_origins=("https://app.example",))
    with running_server(cors) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for origin in evil:
                simple = await client.get("/healthz", headers={"Origin": origin})
                assert "access-control-allow-origin" not in simple.headers, origin
                pre = await client.options("/api/v1/jobs", headers={"Origin": origin, **preflight})
                assert pre.headers.get("access-control-allow-origin") != origin, origin
                assert pre.status_code >= 400, origin
            ok = await client.get("/healthz", headers={"Origin": "https://app.example"})
            assert ok.headers["access-control-allow-origin"] == "https://app.example"
            assert "access-control-allow-credentials" not in ok.headers
    report("auth/cors", origins_tried=len(evil) + 1)


class _NearlyExpiredSigner(TimestampSigner):
    """Signs as if `TOKEN_TTL - 3` seconds ago: the token has 3 s left."""

    def get_timestamp(self) -> int:
        return int(time.time()) - (TOKEN_TTL - 3)


TOKEN_TTL = 3600


async def test_a_watch_token_never_outlives_the_job_tokens_it_was_made_from(
    secured: Settings,
) -> None:
    """Regression (issue 14, item 13): a job token 5 s from expiry was exchanged for a
    watch token valid 24 hours more."""
    settings = secured.replace(token_ttl=TOKEN_TTL)
    pub = publisher(settings)
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    serializer = URLSafeTimedSerializer(SECRET, salt=JOB_SALT, signer=_NearlyExpiredSigner)
    nearly_expired = serializer.dumps(job)
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = {"jobs": [{"job_id": job, "token": nearly_expired}]}
            created = (await client.post("/api/v1/watches", json=body)).json()
            grant = watch_signer(settings).verify(created["token"], created["watch_id"])
            assert grant.verdict is Verdict.GRANTED
            assert grant.expires_at <= time.time() + 4  # not now + 1 h
            url = created["events_url"]

            async def refused() -> bool:
                answer = await client.head(url, params={"token": created["token"]})
                return answer.status_code == 401

            took = await until(refused, 15, "the watch token expiring with the job token's")
    pub.redis.close()
    report("watch token expiry", seconds_after_creation=round(took, 1))


async def test_a_view_only_token_may_watch_but_not_cancel(secured: Settings) -> None:
    """Regression (issue 14, item 13): the token that lets a page watch also let it cancel."""
    runner = FakeRunner(secured)
    with running_server(secured, {"celery": runner}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            created = (await client.post("/api/v1/jobs", json={"task": "demo.report"})).json()
            job = created["job_id"]
            viewer = mint_token(secured, job, view_only=True)
            assert (await client.get(f"/api/v1/jobs/{job}", params={"token": viewer})).is_success
            watch = await client.post(
                "/api/v1/watches", json={"jobs": [{"job_id": job, "token": viewer}]}
            )
            assert watch.status_code == 201
            refused = await client.delete(f"/api/v1/jobs/{job}", params={"token": viewer})
            assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
            other = mint_token(secured, "someone-else", view_only=True)
            wrong = await client.get(f"/api/v1/jobs/{job}", params={"token": other})
            assert wrong.status_code == 403
            full = await client.delete(f"/api/v1/jobs/{job}", params={"token": created["token"]})
            assert full.status_code == 202
    runner.close()
