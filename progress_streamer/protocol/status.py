"""The statuses of a job and the order they may come in (SPEC.md, "Statuses")."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job's status, as the lower-case string every event carries."""

    PENDING = "pending"  #: sent, not yet picked up by a worker
    STARTED = "started"  #: a worker began an attempt (retries start again here)
    PROGRESS = "progress"  #: the running attempt reported progress
    SUCCESS = "success"  #: finished with a result; terminal
    FAILURE = "failure"  #: finished with an error; terminal
    REVOKED = "revoked"  #: cancelled; terminal

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.REVOKED})

# What may follow what. The publish script in Redis enforces the same table
# (`progress_streamer/protocol/scripts.py`); a retry is `started` again with a larger attempt.
TRANSITIONS: dict[JobStatus | None, frozenset[JobStatus]] = {
    None: frozenset(JobStatus),
    JobStatus.PENDING: frozenset({JobStatus.STARTED, JobStatus.FAILURE, JobStatus.REVOKED}),
    JobStatus.STARTED: frozenset(
        {
            JobStatus.STARTED,
            JobStatus.PROGRESS,
            JobStatus.SUCCESS,
            JobStatus.FAILURE,
            JobStatus.REVOKED,
        }
    ),
    JobStatus.PROGRESS: frozenset(
        {
            JobStatus.STARTED,
            JobStatus.PROGRESS,
            JobStatus.SUCCESS,
            JobStatus.FAILURE,
            JobStatus.REVOKED,
        }
    ),
    JobStatus.SUCCESS: frozenset(),
    JobStatus.FAILURE: frozenset(),
    JobStatus.REVOKED: frozenset(),
}
