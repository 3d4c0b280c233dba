"""The web side: `create_app(settings)`, a Starlette app serving the SSE streams, the JSON
API, the JS client and the demo page, on its own or mounted in another app (with its
`lifespan`); tokens for jobs a user's own backend enqueues."""

from __future__ import annotations

from progress_streamer.protocol.runner import ChildJob, JobRunner, QueueStatus, UnsupportedFamily
from progress_streamer.protocol.settings import Settings, SettingsError
from progress_streamer.web.app import ProgressApp, create_app
from progress_streamer.web.catalog import (
    Catalog,
    IntParam,
    InvalidParams,
    TaskSpec,
    UnknownTask,
    default_catalog,
)
from progress_streamer.web.server_protocol import BoundedHttpToolsProtocol, ConnectionLimits
from progress_streamer.web.tokens import mint_token

__all__ = [
    "BoundedHttpToolsProtocol",
    "Catalog",
    "ChildJob",
    "ConnectionLimits",
    "IntParam",
    "InvalidParams",
    "JobRunner",
    "ProgressApp",
    "QueueStatus",
    "Settings",
    "SettingsError",
    "TaskSpec",
    "UnknownTask",
    "UnsupportedFamily",
    "create_app",
    "default_catalog",
    "mint_token",
]
