"""The web app: `create_app(settings)` wires the hub, the routes and the lifespan.

The reference deployment's `app.main:create_app_from_env` (what the Procfile runs) is a
few lines on top of this: settings from the environment, and the runners.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from redis.asyncio.cluster import RedisCluster
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from progress_streamer.protocol.connections import async_client
from progress_streamer.protocol.history import JobReader
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import AsyncPublisher
from progress_streamer.protocol.runner import JobRunner, check_runner
from progress_streamer.protocol.settings import Settings
from progress_streamer.web import access_log
from progress_streamer.web.catalog import Catalog, default_catalog
from progress_streamer.web.errors import EXCEPTION_HANDLERS
from progress_streamer.web.headers import ReferrerPolicy
from progress_streamer.web.lifecycle import Lifecycle
from progress_streamer.web.limits import StreamLimiter
from progress_streamer.web.metrics import Metrics
from progress_streamer.web.quotas import Quotas
from progress_streamer.web.routes.health import healthz, metrics, readyz
from progress_streamer.web.routes.job_events import job_events
from progress_streamer.web.routes.jobs import cancel_job, create_job, job_result, job_status
from progress_streamer.web.routes.pages import STATIC_DIR, index
from progress_streamer.web.routes.watches import create_watch, watch_events
from progress_streamer.web.services import Services
from progress_streamer.web.streaming.hub import SubscriptionHub
from progress_streamer.web.streaming.keepalive import Keepalive
from progress_streamer.web.streaming.response import PARKED
from progress_streamer.web.tokens import job_signer, watch_signer

log = logging.getLogger(__name__)

# Connections the web process's commands share (the hub has its own). Bounded, so a burst
# of thousands of stream opens queues for a connection instead of opening thousands of
# sockets to Redis (its `maxclients`) and keeping them all idle in the pool afterwards.
REDIS_POOL_SIZE = 64
REDIS_TIMEOUT = 10.0  # a command, or the wait for a free connection, fails after this


class ProgressApp(Starlette):
    """Starlette, running each event stream's body from the top of the app, and starting
    its services (Redis, the hub, the sweeper) wherever it is served.

    A stream's endpoint and response start go through the routing and the middleware
    (Referrer-Policy, CORS, error handling) as usual; then the response parks itself in
    the scope (`PARKED`) and returns, and this runs its body with the server's own
    `send`. An open stream is then held by two coroutine frames instead of the twenty
    of Starlette's call chain (their locals were the largest part of an idle stream's
    memory), and its frames cross none of the middleware wrappers, which only look at
    the response start.

    Served on its own, its lifespan runs as any app's. Mounted in another app
    (`api.mount("/progress", progress_app)`), it never gets lifespan events: the host
    runs `progress_app.lifespan` in its own (`FastAPI(lifespan=progress_app.lifespan)`),
    and until it does, every request answers a 500 that names that line.
    """

    def __init__(self, services: Services, **kwargs: Any) -> None:
        self.services = services
        self._lifecycle = Lifecycle()
        super().__init__(lifespan=self.lifespan, **kwargs)
        self.state.services = services

    def lifespan(self, app: object = None) -> AbstractAsyncContextManager[None]:
        """The app's services for as long as the returned context is entered: pass it as a
        host app's lifespan (`FastAPI(lifespan=progress_app.lifespan)`), or enter it in
        your own (`async with progress_app.lifespan(app): yield`). Entered again while
        running (a host's lifespan and the app's own), it starts nothing twice."""
        return self._lifecycle.running(self.services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if not self._lifecycle.serving:
            await self._lifecycle.refusal()(scope, receive, send)
            return
        scope[PARKED] = None
        try:
            await super().__call__(scope, receive, send)
        except BaseException:
            if (stream := scope.pop(PARKED, None)) is not None:
                await stream.abandon()
            raise
        # Taken out of the scope, not read: the server's request cycle holds the scope,
        # and the stream (through its writer) holds that cycle. Left in, the two would
        # form a reference cycle, and every ended stream would wait for a full garbage
        # collection to be freed (benchmarks.md, "Garbage collection in the web process").
        if (stream := scope.pop(PARKED, None)) is not None:
            await stream.run(receive, send)


def create_app(
    settings: Settings,
    *,
    catalog: Catalog | None = None,
    runners: Mapping[str, JobRunner] | None = None,
) -> ProgressApp:
    settings.check_web()  # refuses auth without a strong secret, before anything is built
    runners = dict(runners or {})
    for name, runner in runners.items():
        check_runner(name, runner)
    access_log.install()
    return ProgressApp(
        build_services(settings, catalog or default_catalog(), runners),
        routes=routes(),
        middleware=middleware(settings),
        exception_handlers=EXCEPTION_HANDLERS,
    )


def build_services(
    settings: Settings, catalog: Catalog, runners: Mapping[str, JobRunner]
) -> Services:
    metrics = Metrics()
    client = async_client(
        settings,
        max_connections=REDIS_POOL_SIZE,
        socket_timeout=REDIS_TIMEOUT,
    )
    reader = JobReader(client)
    hub = SubscriptionHub(
        settings,
        reader,
        AsyncPublisher(client, settings),
        metrics,
        client_name=f"progress-hub-{settings.key_prefix}",
        # Cluster mode: one pub/sub connection per primary, routed by this client's map.
        cluster=client if isinstance(client, RedisCluster) else None,
    )
    limiter = StreamLimiter(settings)
    metrics.track(lambda: limiter.open, lambda: hub.watched_jobs)
    return Services(
        settings=settings,
        keyspace=KeySpace(settings.key_prefix),
        redis=client,
        reader=reader,
        hub=hub,
        keepalive=Keepalive(hub, settings.ping_seconds),
        limiter=limiter,
        metrics=metrics,
        catalog=catalog,
        runners=runners,
        job_tokens=job_signer(settings),
        watch_tokens=watch_signer(settings),
        quotas=Quotas(client, settings),
    )


def routes() -> list[BaseRoute]:
    jobs = "/api/v1/jobs"
    return [
        Route("/", index, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route(jobs, create_job, methods=["POST"]),
        Route(jobs + "/{job_id}", job_status, methods=["GET"]),
        Route(jobs + "/{job_id}", cancel_job, methods=["DELETE"]),
        Route(jobs + "/{job_id}/events", job_events, methods=["GET"]),
        Route(jobs + "/{job_id}/result", job_result, methods=["GET"]),
        Route("/api/v1/watches", create_watch, methods=["POST"]),
        Route("/api/v1/watches/{watch_id}/events", watch_events, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]


def middleware(settings: Settings) -> list[Middleware]:
    stack = []
    if settings.trusted_proxies:
        # Outermost, so the limits, the routes and uvicorn's access log all see the
        # forwarded client. The Procfile runs uvicorn with --no-proxy-headers: forwarded
        # headers count only from the peers listed here, never by default.
        trusted = list(settings.trusted_proxies)
        stack.append(Middleware(ProxyHeadersMiddleware, trusted_hosts=trusted))
    stack.append(Middleware(ReferrerPolicy))
    if settings.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                expose_headers=["Location"],
            )
        )
    return stack
