"""`/healthz` (the process runs), `/readyz` (Redis answers) and `/metrics` (Prometheus)."""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from progress_streamer.web.errors import ApiError
from progress_streamer.web.metrics import CONTENT_TYPE_LATEST
from progress_streamer.web.services import services_of

READY_TIMEOUT = 1.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    services = services_of(request)
    try:
        await asyncio.wait_for(services.redis.ping(), READY_TIMEOUT)
    except (RedisError, OSError, TimeoutError):
        raise ApiError(503, "not_ready", "Redis does not answer", {"Retry-After": "2"}) from None
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    body = services_of(request).metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
