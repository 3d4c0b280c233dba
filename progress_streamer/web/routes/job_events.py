"""`GET /api/v1/jobs/{job_id}/events`: one job's Server-Sent Events stream."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from progress_streamer.web.auth import presented_token
from progress_streamer.web.job_access import require_job_token
from progress_streamer.web.limits import client_address
from progress_streamer.web.routes.jobs import job_id_of
from progress_streamer.web.services import services_of
from progress_streamer.web.streaming.opening import CaughtUp, StreamRequest, open_stream, parse_seq
from progress_streamer.web.streaming.response import EventStreamResponse


def last_event_id(request: Request) -> str | None:
    """The `Last-Event-ID` header wins over `?last_event_id=` (EventSource keeps the
    query of its first URL on every reconnect, the header carries the real position)."""
    header = request.headers.get("last-event-id")
    return header if header is not None else request.query_params.get("last_event_id")


async def job_events(request: Request) -> Response | EventStreamResponse:
    services = services_of(request)
    job_id = job_id_of(request)
    await require_job_token(services, presented_token(request), job_id)
    after = parse_seq(last_event_id(request))
    req = StreamRequest((job_id,), (after,), client_address(request), watch=False)
    try:
        return await open_stream(services, req)
    except CaughtUp:
        return Response(status_code=204)
