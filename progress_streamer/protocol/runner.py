"""The runner contract: what the web app hands work to (Celery, ARQ, or a user's own).

The app never imports task code: a runner enqueues by task name and cancels by job id.
`enqueue` and `cancel` are synchronous (Celery's client is), so the routes call them in a
worker thread; the rest run on the app's event loop. A runner that subclasses `JobRunner`
inherits the documented defaults of the optional methods; `create_app` refuses a runner
that lacks any of them, naming it, rather than probing for methods on each request.
Kept here, free of Starlette, so the Celery and ARQ integrations can subclass it without
loading the web side.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from progress_streamer.protocol.event import ErrorInfo
from progress_streamer.protocol.publisher import PublishOutcome
from progress_streamer.protocol.status import JobStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStatus:
    """A queue's own record of a job we hold no snapshot of, in our terms."""

    status: JobStatus
    result: Any = None
    error: ErrorInfo | None = None


class UnsupportedFamily(ValueError):
    """A runner that cannot run this kind of parent job (ARQ: chains and chords)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildJob:
    """One child of a parent job sent by the web app: its id, task name and parameters."""

    job_id: str
    task: str
    params: dict[str, Any]


class JobRunner(Protocol):
    """Enqueues and cancels jobs of one queue system; see the module docstring."""

    def enqueue(self, job_id: str, task: str, params: dict[str, Any]) -> None:
        """Send `task` by name with `job_id` as its id; `pending` is published first."""
        ...

    def enqueue_family(
        self, parent_id: str, kind: str, children: list[ChildJob], fail_fast: bool
    ) -> None:
        """Record the parent job `parent_id` with its children (`protocol/family.py`), then
        send them as a `kind` ('group', 'chain', 'chord': the callback is the last child).
        Default: `UnsupportedFamily` (the route answers 422 with its message)."""
        raise UnsupportedFamily(f"this runner runs no {kind}s")

    def cancel(self, job_id: str) -> PublishOutcome:
        """Publish `revoked` through the publish script, then revoke the task.

        Refused with reason `terminal` (already finished) or `not_found` (no such job);
        the route answers 409 for either, having answered 404 for an unknown job. A
        parent job: each unfinished child gets `revoked` first (`FamilyDriver.cancel`)."""
        ...

    async def queue_status(self, job_id: str) -> QueueStatus | None:
        """The queue's record of a job we have no snapshot of (the status endpoint's
        fallback). Default: None, the runner's jobs are always published."""
        return None

    async def run_settler(self, stop: asyncio.Event) -> None:
        """Ends jobs the queue finished without running them, until `stop` is set; every
        web process runs one per runner. Default: nothing to settle, returns at once."""
        return None

    async def aclose(self) -> None:
        """Closes what the runner opened on the app's event loop. Default: nothing."""
        return None

    def close(self) -> None:
        """Closes what the runner opened otherwise (called in a thread). Default: nothing."""
        return None


RUNNER_METHODS = (
    "enqueue",
    "cancel",
    "queue_status",
    "run_settler",
    "aclose",
    "close",
    "enqueue_family",
)


def check_runner(name: str, runner: object) -> None:
    """`TypeError` naming what `runner` lacks of the contract; nothing if it is complete."""
    missing = [m for m in RUNNER_METHODS if not callable(getattr(runner, m, None))]
    if missing:
        raise TypeError(
            f"runner {name!r} ({type(runner).__name__}) lacks {', '.join(missing)}: "
            "subclass progress_streamer.web.JobRunner to inherit the defaults"
        )
