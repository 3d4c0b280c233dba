"""Everything a request handler needs, built once per app by `create_app`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio
from starlette.requests import Request

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
    quotas: Quotas


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
