"""Follow and drive jobs from Python: scripts, other services, notebooks, the CLI.

`ProgressClient` (sync) and `AsyncProgressClient` (asyncio; works in Jupyter's running
loop) wrap the HTTP API; their `events()` iterate a job's events, resuming across drops
with the last id (no gap, no repeat), and stop after the terminal event.
"""

from __future__ import annotations

from progress_streamer.client.aio import AsyncProgressClient
from progress_streamer.client.errors import (
    Conflict,
    Forbidden,
    JobNotFound,
    ProgressClientError,
    Unauthorized,
    Unreachable,
)
from progress_streamer.client.requests import Enqueued
from progress_streamer.client.sync import ProgressClient
from progress_streamer.protocol.event import ProgressEvent

__all__ = [
    "AsyncProgressClient",
    "Conflict",
    "Enqueued",
    "Forbidden",
    "JobNotFound",
    "ProgressClient",
    "ProgressClientError",
    "ProgressEvent",
    "Unauthorized",
    "Unreachable",
]
