"""Everything a request handler needs, built once per app by `create_app`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from progress_streamer.protocol.connections import AsyncRedis
from progress_streamer.protocol.history import JobReader
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.runner import JobRunner
from progress_streamer.protocol.settings import Settings
from progress_streamer.web.catalog import Catalog
from progress_streamer.web.limits import StreamLimiter
from progress_streamer.web.metrics import Metrics
from progress_streamer.web.quotas import Quotas
from progress_streamer.web.streaming.hub import SubscriptionHub
from progress_streamer.web.streaming.keepalive import Keepalive
from progress_streamer.web.tokens import TokenSigner


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    settings: Settings
    keyspace: KeySpace
    redis: AsyncRedis
    reader: JobReader
    hub: SubscriptionHub
    keepalive: Keepalive
    limiter: StreamLimiter
    metrics: Metrics
    catalog: Catalog
    runners: Mapping[str, JobRunner]
    job_tokens: TokenSigner
    watch_tokens: TokenSigner
    quotas: Quotas


INCLUDED_ROUTES = (
    "progress_streamer's routes must be served by the app create_app() returned: mount it "
    "(api.mount('/progress', progress_app), with FastAPI(lifespan=progress_app.lifespan)) "
    "instead of including its routes in another app (docs/fastapi.md)"
)


def services_of(request: Request) -> Services:
    """The services of the app serving the request. Routes copied into another app
    (`api.router.routes.extend(progress_app.routes)`) have none: a clear error says to
    mount the app instead (its lifespan and middleware come with it that way)."""
    services = getattr(request.app.state, "services", None)
    if not isinstance(services, Services):
        raise RuntimeError(INCLUDED_ROUTES)
    return services
