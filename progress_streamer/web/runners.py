"""What `POST /jobs` and `DELETE /jobs/{id}` hand work to: a runner (Celery, ARQ).

The app never imports task code: a runner enqueues by task name. Runners are sync (the
Celery client is), so the routes call them in a worker thread.
"""

from __future__ import annotations

from typing import Any, Protocol

from progress_streamer.protocol.publisher import PublishOutcome


class JobRunner(Protocol):
    def enqueue(self, job_id: str, task: str, params: dict[str, Any]) -> None:
        """Send the task; the runner publishes `pending` itself."""

    def cancel(self, job_id: str) -> PublishOutcome:
        """Publish `revoked` through the publish script, then revoke the task."""


RUNNER_FIELD = "runner"  # on the job's state hash: which runner enqueued it (for DELETE)
