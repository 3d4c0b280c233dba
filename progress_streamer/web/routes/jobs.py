"""The JSON job endpoints: enqueue, status, cancel, and the attached result file."""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import quote

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from progress_streamer.protocol.connections import ascript
from progress_streamer.protocol.event import PROGRESS_FIELDS, ProgressEvent
from progress_streamer.protocol.files import file_info, read_chunks
from progress_streamer.protocol.keys import StateField, is_valid_job_id
from progress_streamer.protocol.runner import JobRunner
from progress_streamer.protocol.scripts import WRITE_HASH, write_hash_args
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.auth import presented_token, require_api_key
from progress_streamer.web.catalog import DEFAULT_RUNNER, InvalidParams, UnknownTask
from progress_streamer.web.download import FileDownload
from progress_streamer.web.errors import ApiError
from progress_streamer.web.job_access import require_job_token
from progress_streamer.web.limits import client_address, read_json
from progress_streamer.web.routes.families import create_family, is_family_request
from progress_streamer.web.services import Services, services_of
from progress_streamer.web.urls import api_url

log = logging.getLogger(__name__)


def job_id_of(request: Request) -> str:
    """The path's job id, or 404 before it reaches any Redis key or channel name."""
    job_id = request.path_params["job_id"]
    if not is_valid_job_id(job_id):
        raise ApiError(404, "not_found", "no such job")
    assert isinstance(job_id, str)
    return job_id


async def authorize(
    request: Request, services: Services, job_id: str, *, to_change: bool = False
) -> None:
    token = presented_token(request)
    await require_job_token(services, token, job_id, to_change=to_change)


async def create_job(request: Request) -> Response:
    services = services_of(request)
    require_api_key(services.settings, request)
    if services.settings.api_key is None:  # with a key, only trusted backends get here
        await services.quotas.take("jobs", client_address(request))
    body = await read_json(request, services.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    if is_family_request(body):
        return await create_family(request, services, body)
    runner_name = body.get("runner", DEFAULT_RUNNER)
    try:
        spec = services.catalog.resolve(body.get("task"), runner_name, services.runners)
        params = spec.validate(body.get("params"))
    except UnknownTask as exc:
        raise ApiError(422, "unknown_task", str(exc)) from None
    except InvalidParams as exc:
        raise ApiError(422, "invalid_params", str(exc)) from None
    runner = services.runners[runner_name]
    job_id = uuid.uuid4().hex
    await _remember_runner(services, job_id, runner_name)
    await anyio.to_thread.run_sync(runner.enqueue, job_id, spec.name, params)
    urls = job_urls(request, job_id)
    token = services.job_tokens.mint(job_id) if services.settings.auth_enabled else None
    body = {"job_id": job_id, "status": "pending", **urls, "token": token}
    return JSONResponse(body, status_code=202, headers={"Location": urls["status_url"]})


def job_urls(request: Request, job_id: str) -> dict[str, str]:
    """The job's URLs, under the path the app is served at (`urls.py`)."""
    base = api_url(request, f"/jobs/{job_id}")
    return {"status_url": base, "events_url": f"{base}/events", "result_url": f"{base}/result"}


async def _remember_runner(services: Services, job_id: str, runner: str) -> None:
    """Which runner cancels this job, on its state hash (same slot, same TTL)."""
    state = services.keyspace.job(job_id).state
    args = write_hash_args(services.settings.job_ttl, {StateField.RUNNER: runner}, replace=False)
    await ascript(services.redis, WRITE_HASH)(keys=[state], args=args)


async def _snapshot(services: Services, job_id: str) -> ProgressEvent:
    event = await services.reader.snapshot(services.keyspace.job(job_id))
    if event is None:
        raise ApiError(404, "not_found", "no such job")
    return event


async def job_status(request: Request) -> Response:
    services = services_of(request)
    job_id = job_id_of(request)
    await authorize(request, services, job_id)
    event = await services.reader.snapshot(services.keyspace.job(job_id))
    if event is not None:
        body = status_body(event)
        if event.children is not None:  # a parent job: its children's ids, in order
            ids = await services.redis.hget(services.keyspace.family(job_id), "ids")  # type: ignore[misc]
            body["child_ids"] = ids.decode().split(",") if ids else []
        return JSONResponse(body)
    known = await _queue_status(services, job_id)
    if known is None:
        raise ApiError(404, "not_found", "no such job")
    return JSONResponse(known)


async def _queue_status(services: Services, job_id: str) -> dict[str, Any] | None:
    """A job only its queue knows (ARQ, enqueued without `publish_pending`), or None."""
    for runner in services.runners.values():
        try:
            known = await runner.queue_status(job_id)
        except Exception:
            log.warning("could not ask a runner's queue about job %s", job_id, exc_info=True)
            continue
        if known is not None:
            error = None if known.error is None else known.error.as_dict()
            return {
                "job_id": job_id,
                "status": known.status.value,
                "attempt": 1,
                "progress": None,
                "result": known.result,
                "error": error,
                "seq": 0,
            }
    return None


def status_body(event: ProgressEvent) -> dict[str, Any]:
    progress = {name: getattr(event, name) for name in PROGRESS_FIELDS}
    body = {
        "job_id": event.job_id,
        "status": event.status.value,
        "attempt": event.attempt,
        "progress": progress if any(v is not None for v in progress.values()) else None,
        "result": event.result,
        "error": None if event.error is None else event.error.as_dict(),
        "seq": event.seq,
    }
    if event.data is not None:  # extra keys the task reported (SPEC v2): only when it did
        body["data"] = event.data
    if event.children is not None:  # a parent job's counts (SPEC v2 "Groups")
        body["children"] = event.children
    return body


async def cancel_job(request: Request) -> Response:
    services = services_of(request)
    job_id = job_id_of(request)
    await authorize(request, services, job_id, to_change=True)
    await _snapshot(services, job_id)
    runner = await _runner_of(services, job_id)
    outcome = await anyio.to_thread.run_sync(runner.cancel, job_id)
    if not outcome.accepted:
        raise ApiError(409, "conflict", f"the job cannot be cancelled ({outcome.reason})")
    body = {"job_id": job_id, "status": "revoked", "seq": outcome.seq}
    return JSONResponse(body, status_code=202)


async def _runner_of(services: Services, job_id: str) -> JobRunner:
    state = services.keyspace.job(job_id).state
    raw: bytes | None = await services.redis.hget(state, StateField.RUNNER)  # type: ignore[misc]
    # Jobs sent by a user's own backend (a plain `.delay()`) carry no runner: Celery.
    name = raw.decode() if raw else "celery"
    runner = services.runners.get(name)
    if runner is None:
        raise ApiError(409, "conflict", f"runner {name!r} is not available here")
    return runner


async def job_result(request: Request) -> Response:
    services = services_of(request)
    job_id = job_id_of(request)
    await authorize(request, services, job_id)
    event = await _snapshot(services, job_id)
    if not event.is_terminal:
        raise ApiError(409, "conflict", "the job has not finished")
    stored = await file_info(services.redis, services.keyspace, job_id)
    if event.status is not JobStatus.SUCCESS or stored is None:
        raise ApiError(404, "not_found", "the job attached no file")
    return FileDownload(
        read_chunks(services.redis, services.keyspace, job_id, stored),
        size=stored.size,
        media_type=_safe_media_type(stored.content_type),
        headers={"Content-Disposition": content_disposition(stored.name)},
        send_timeout=services.settings.send_timeout,
    )


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII `filename` and, for other names, RFC 5987 `filename*`."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '"\r\n').strip(" .")
    name = name[:200] or "result"
    ascii_name = "".join(c if c.isascii() else "_" for c in name)
    header = f'attachment; filename="{ascii_name}"'
    if ascii_name != name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


def _safe_media_type(media: str) -> str:
    """The stored type if it is a plausible header value; else a generic one (a control
    or non-Latin-1 character would make the server drop the connection unanswered)."""
    media = media.strip()
    unsafe = any(ord(c) < 32 or ord(c) == 127 or ord(c) > 255 for c in media)
    if not media or unsafe or "/" not in media:
        return "application/octet-stream"
    return media
