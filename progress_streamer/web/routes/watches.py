"""Watches: one stream for many jobs. `POST /api/v1/watches`, `GET .../{watch_id}/events`.

A watch is the ordered list of its job ids, stored under `KeySpace.watch(id)` with the job
TTL; its token covers those jobs. The stream's `id:` is a cursor of the last seq sent per
job in that order (`12.0.7`), so a resume replays each job after its own seq.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from progress_streamer.protocol.history import CorruptState
from progress_streamer.protocol.keys import StateField, is_valid_job_id
from progress_streamer.web.auth import presented_token, require_token
from progress_streamer.web.errors import ApiError
from progress_streamer.web.job_access import require_job_token
from progress_streamer.web.limits import client_address, read_json
from progress_streamer.web.routes.job_events import last_event_id
from progress_streamer.web.services import Services, services_of
from progress_streamer.web.streaming.opening import CaughtUp, StreamRequest, open_stream, parse_seq
from progress_streamer.web.streaming.response import EventStreamResponse
from progress_streamer.web.urls import api_url

MAX_JOBS = 100


async def create_watch(request: Request) -> Response:
    services = services_of(request)
    client = client_address(request)
    await services.quotas.take("watches", client)
    body = await read_json(request, services.settings.max_body_bytes)
    job_ids = _requested_jobs(body)
    expires_at = float("inf")
    for job_id, token in job_ids:
        if not is_valid_job_id(job_id):
            raise ApiError(404, "not_found", f"no such job: {str(job_id)[:80]!r}")
        grant = await require_job_token(services, token, job_id, f"job {job_id!r}")
        expires_at = min(expires_at, grant.expires_at)
    ids = [job_id for job_id, _ in job_ids]
    lifetime_ms = await _lifetime_of(services, ids)
    watch_id = uuid.uuid4().hex
    await services.quotas.add_watch(client, watch_id, lifetime_ms)
    key = services.keyspace.watch(watch_id)
    await services.redis.set(key, ",".join(ids), px=lifetime_ms)
    token = None
    if services.settings.auth_enabled:  # never outlives the tokens it was made from
        token = services.watch_tokens.mint(watch_id, expires_at=expires_at)
    events_url = api_url(request, f"/watches/{watch_id}/events")
    body = {"watch_id": watch_id, "events_url": events_url, "token": token}
    return JSONResponse(body, status_code=201, headers={"Location": events_url})


def _requested_jobs(body: Any) -> list[tuple[Any, str | None]]:
    jobs = body.get("jobs") if isinstance(body, dict) else None
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= MAX_JOBS:
        raise ApiError(422, "invalid_params", f"jobs must be a list of 1 to {MAX_JOBS} jobs")
    pairs: list[tuple[Any, str | None]] = []
    for item in jobs:
        if not isinstance(item, dict):
            raise ApiError(422, "invalid_params", 'each job must be {"job_id", "token"}')
        token = item.get("token")
        pairs.append((item.get("job_id"), token if isinstance(token, str) else None))
    if len({job_id for job_id, _ in pairs if isinstance(job_id, str)}) != len(pairs):
        raise ApiError(422, "invalid_params", "job ids must be strings, each listed once")
    return pairs


async def _lifetime_of(services: Services, job_ids: list[str]) -> int:
    """404 naming a job that does not exist; else how long (ms) the watch key should live:
    as long as the longest-lived of its jobs' states (each event renews a job's TTL, so a
    running job's is the whole `PROGRESS_JOB_TTL`), and never longer."""
    async with services.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            state = services.keyspace.job(job_id).state
            pipe.hexists(state, StateField.EVENT)
            pipe.pttl(state)
        replies = await pipe.execute()
    for job_id, exists in zip(job_ids, replies[::2], strict=True):
        if not exists:
            raise ApiError(404, "not_found", f"no such job: {job_id!r}")
    longest = max(replies[1::2])
    return longest if longest > 0 else services.settings.job_ttl * 1000


async def watch_events(request: Request) -> Response | EventStreamResponse:
    services = services_of(request)
    watch_id = request.path_params["watch_id"]
    if not is_valid_job_id(watch_id):
        raise ApiError(404, "not_found", "no such watch")
    token = presented_token(request)
    require_token(services.settings, services.watch_tokens, token, watch_id, "watch")
    raw = await services.redis.get(services.keyspace.watch(watch_id))
    if raw is None:
        raise ApiError(404, "not_found", "no such watch")
    job_ids = tuple(raw.decode("utf-8", "replace").split(","))
    if len(job_ids) > MAX_JOBS or not all(is_valid_job_id(job_id) for job_id in job_ids):
        raise CorruptState("this watch", "not a list of job ids")
    after = parse_cursor(last_event_id(request), len(job_ids))
    req = StreamRequest(job_ids, after, client_address(request), watch=True)
    try:
        return await open_stream(services, req)
    except CaughtUp:
        return Response(status_code=204)


def parse_cursor(raw: str | None, jobs: int) -> tuple[int | None, ...]:
    """`12.0.7` as per-job seqs (0: nothing yet); anything malformed: snapshots for all."""
    parts = raw.split(".") if raw else []
    seqs = [parse_seq(part) for part in parts]
    if len(seqs) != jobs or any(seq is None for seq in seqs):
        return (None,) * jobs
    return tuple(None if seq == 0 else seq for seq in seqs)
