"""The worker's heartbeat: keeps a running attempt's lease fresh while its task runs.

One daemon thread per running attempt, in the process that runs the task (the prefork
pool child), touching the lease every `PROGRESS_LEASE_SECONDS / 3`. If that process dies,
the touches stop and `sweeper.LeaseSweeper` ends the job with `WorkerLost`.
"""

from __future__ import annotations

import logging
import threading

import redis

from progress_streamer.protocol.publisher import Publisher

log = logging.getLogger(__name__)


class LeaseHeartbeat:
    """Touches one attempt's lease until stopped, or until the job is over."""

    def __init__(
        self, publisher: Publisher, job_id: str, attempt: int, interval: float | None = None
    ) -> None:
        self.publisher = publisher
        self.job_id = job_id
        self.attempt = attempt
        self.interval = interval if interval is not None else publisher.settings.lease_seconds / 3
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LeaseHeartbeat:
        """Touch once now (indexing the job for the sweeper), then from a thread."""
        if self._touch():
            self._thread = threading.Thread(
                target=self._run, name=f"lease-{self.job_id}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            if not self._touch():
                return

    def _touch(self) -> bool:
        """False once the job is finished or runs another attempt: stop touching."""
        try:
            return self.publisher.touch_lease(self.job_id, self.attempt) is not None
        except (redis.RedisError, OSError) as exc:
            # Keep trying: a short Redis outage must not end a healthy job.
            log.warning("job %s: lease not extended: %s", self.job_id, exc)
            return True
