"""Everything a request handler needs, built once per app by `create_app`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio
from starlette.requests import Request

from app.hub import SubscriptionHub
from app.keepalive import Keepalive
from app.limits import StreamLimiter
from app.metrics import Metrics
from app.runners import JobRunner
from app.tokens import TokenSigner
from workers.catalog import Catalog
from workers.history import JobReader
from workers.keys import KeySpace
from workers.settings import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    settings: Settings
    keyspace: KeySpace
    redis: redis.asyncio.Redis
    reader: JobReader
    hub: SubscriptionHub
    keepalive: Keepalive
    limiter: StreamLimiter
    metrics: Metrics
    catalog: Catalog
    runners: Mapping[str, JobRunner]
    job_tokens: TokenSigner
    watch_tokens: TokenSigner


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
