"""The naive baseline: the tutorial design, one Redis pub/sub connection per browser.

    uvicorn bench.naive_app:create_app_from_env --factory   (started by `bench.servers`)

What the tutorials teach: a minimal sse-starlette endpoint that subscribes to the job's
channel for each client, JSON-decodes every message for each client to get its `seq`
and status, and ends the stream after a terminal event. Same URL and frames as ours
(`id: <seq>` / `data: <json>`), same channel names (`protocol.keys`). The pool gets a
large `max_connections` so the design is measured, not a pool default; it has no
snapshot, no replay and no caps. Configured by BENCH_REDIS_URL and BENCH_KEY_PREFIX.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator

import redis.asyncio
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from progress_streamer.protocol.keys import KeySpace, is_valid_job_id

TERMINAL = {"success", "failure", "revoked"}
POOL_CONNECTIONS = 100_000  # one pub/sub connection per client: never the limit


def create_app(redis_url: str, key_prefix: str) -> Starlette:
    client = redis.asyncio.Redis.from_url(redis_url, max_connections=POOL_CONNECTIONS)
    keyspace = KeySpace(key_prefix)

    async def job_events(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not is_valid_job_id(job_id):
            return JSONResponse({"error": {"code": "not_found", "message": "no such job"}}, 404)
        pubsub = client.pubsub()
        await pubsub.subscribe(keyspace.job(job_id).channel)
        return EventSourceResponse(relay(pubsub), ping=15, headers={"X-Accel-Buffering": "no"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    routes = [Route("/api/v1/jobs/{job_id}/events", job_events)]
    return Starlette(routes=routes, lifespan=lifespan)


async def relay(pubsub: redis.asyncio.client.PubSub) -> AsyncIterator[dict[str, object]]:
    """Every message of the channel as an SSE event, until a terminal one."""
    try:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            data = message["data"].decode()
            event = json.loads(data)
            yield {"id": str(event["seq"]), "data": data}
            if event["status"] in TERMINAL:
                return
    finally:
        await pubsub.aclose()


def create_app_from_env() -> Starlette:
    return create_app(os.environ["BENCH_REDIS_URL"], os.environ["BENCH_KEY_PREFIX"])
