"""How the web app enqueues and cancels Celery jobs, by task name (no task code imported).

`CeleryRunner`'s methods are synchronous: call them from a thread. `pending` is published
by the `before_task_publish` handler (connected by the runner), before the
message is sent, so it always precedes `started`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery

from progress_streamer.celery.canvas import canvas_of, start
from progress_streamer.celery.chord_backend import chord_backend_url
from progress_streamer.celery.installer import install
from progress_streamer.celery.runtime import runtime
from progress_streamer.protocol.connections import sync_client
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.family import FamilyKind
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import Publisher, PublishOutcome
from progress_streamer.protocol.runner import ChildJob, JobRunner
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus

log = logging.getLogger(__name__)

RUNNER_POOL_SIZE = 64  # connections to the progress Redis (per node on a cluster)


class CeleryRunner(JobRunner):
    """Sends jobs to Celery workers and cancels them."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self._own_app = app is None
        self.app = app if app is not None else sender_app(settings)
        self.keyspace = KeySpace(settings.key_prefix)
        # Called from the web app's worker threads (anyio's default limit: 40).
        self._client = sync_client(settings, max_connections=RUNNER_POOL_SIZE)
        self._publisher = Publisher(self._client, settings)
        self._publisher.families.revoke_tasks = self._revoke
        # The signal handlers of this process publish `pending` with our settings.
        install(self.app, settings=settings)

    def enqueue(self, job_id: str, task: str, params: Mapping[str, Any]) -> None:
        """Send `task` by name with the job id as its task id; `pending` comes first."""
        self.keyspace.job(job_id)  # validates the id
        # Our own sender's backend exists for chords alone: a single job's result lives in
        # its snapshot, so the worker need not store it there. A user's app keeps its
        # backend's results (their `AsyncResult.get()` must still work).
        options = {"ignore_result": True} if self._own_app else {}
        self.app.send_task(task, kwargs=dict(params), task_id=job_id, **options)

    def enqueue_family(
        self, parent_id: str, kind: str, children: list[ChildJob], fail_fast: bool
    ) -> None:
        """Record the parent and send its children as a Celery group, chain or chord."""
        members = [(c.job_id, c.task, dict(c.params)) for c in children]
        canvas = canvas_of(self.app, FamilyKind(kind), members)
        start(canvas, fail_fast=fail_fast, parent_id=parent_id, publisher=self._publisher,
              runner="celery")  # fmt: skip

    def cancel(self, job_id: str) -> PublishOutcome:
        """Publish `revoked` first; if accepted, revoke the task (terminating it if it runs).

        Refused with reason 'terminal' when the job already finished (answer 409), or
        'not_found' when Redis knows no such job (answer 404).
        """
        keys = self.keyspace.job(job_id)
        if not self._client.exists(keys.state):
            return PublishOutcome(accepted=False, seq=0, reason="not_found")
        if self._client.exists(self.keyspace.family(job_id)):
            return self._publisher.families.cancel(job_id)
        draft = EventDraft(job_id=job_id, status=JobStatus.REVOKED, message="cancelled")
        outcome = self._publisher.publish(draft)
        if not outcome.accepted:
            return outcome
        self._client.zrem(self.keyspace.leases, job_id)
        try:
            # A worker drops it when it arrives; a running one gets SIGTERM. With no
            # worker up the broadcast is lost, but the task class will not run the job.
            self.app.control.revoke(job_id, terminate=True, signal="SIGTERM")
        except Exception as exc:
            log.warning("job %s: revoked, but the broadcast to workers failed: %s", job_id, exc)
        return outcome

    def _revoke(self, job_ids: list[str]) -> None:
        """Stop the tasks of revoked children (a running one gets SIGTERM)."""
        self.app.control.revoke(job_ids, terminate=True, signal="SIGTERM")

    def close(self) -> None:
        self._publisher.families.close()
        self._client.close()
        runtime.close()
        if self._own_app:
            self.app.close()


def sender_app(settings: Settings) -> Celery:
    """A Celery app that only sends by name, on the broker of `settings`, in JSON."""
    app = Celery("progress_streamer", broker=settings.broker_url, set_as_current=False)
    if settings.broker_url.startswith(("redis://", "rediss://")):
        app.conf.result_backend = chord_backend_url(settings.broker_url)  # chords need one
    app.conf.update(
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
    )
    return app
