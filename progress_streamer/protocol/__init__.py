"""The protocol both sides share: statuses, the event and its JSON, the Redis key space,
the publish script and the publishers. It imports neither Starlette, Celery nor ARQ."""

from __future__ import annotations

from progress_streamer.protocol.connections import async_client, sync_client
from progress_streamer.protocol.event import (
    ErrorInfo,
    EventDraft,
    EventNotSerializable,
    EventTooLarge,
    MalformedEvent,
    ProgressEvent,
    decode_event,
)
from progress_streamer.protocol.family import (
    ChildPlan,
    FamilyKind,
    FamilyPlan,
    InvalidFamily,
    arecord_family,
    record_family,
)
from progress_streamer.protocol.files import FileTooLarge
from progress_streamer.protocol.incarnation import SeenState
from progress_streamer.protocol.keys import InvalidJobId, KeySpace, is_valid_job_id
from progress_streamer.protocol.publisher import AsyncPublisher, Publisher, PublishOutcome
from progress_streamer.protocol.settings import Settings, SettingsError
from progress_streamer.protocol.status import TERMINAL, JobStatus

__all__ = [
    "TERMINAL",
    "AsyncPublisher",
    "ChildPlan",
    "ErrorInfo",
    "EventDraft",
    "EventNotSerializable",
    "EventTooLarge",
    "FamilyKind",
    "FamilyPlan",
    "FileTooLarge",
    "InvalidFamily",
    "InvalidJobId",
    "JobStatus",
    "KeySpace",
    "MalformedEvent",
    "ProgressEvent",
    "PublishOutcome",
    "Publisher",
    "SeenState",
    "Settings",
    "SettingsError",
    "arecord_family",
    "async_client",
    "decode_event",
    "is_valid_job_id",
    "record_family",
    "sync_client",
]
