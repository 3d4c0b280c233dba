"""The statuses of a job and the order they may come in (SPEC.md, "Statuses")."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
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


TERMINAL = frozenset({Status.SUCCESS, Status.FAILURE, Status.REVOKED})

# What may follow what. The publish script in Redis enforces the same table
# (`workers/scripts.py`); a retry is `started` again with a larger attempt.
TRANSITIONS: dict[Status | None, frozenset[Status]] = {
    None: frozenset(Status),
    Status.PENDING: frozenset({Status.STARTED, Status.FAILURE, Status.REVOKED}),
    Status.STARTED: frozenset(
        {Status.STARTED, Status.PROGRESS, Status.SUCCESS, Status.FAILURE, Status.REVOKED}
    ),
    Status.PROGRESS: frozenset(
        {Status.STARTED, Status.PROGRESS, Status.SUCCESS, Status.FAILURE, Status.REVOKED}
    ),
    Status.SUCCESS: frozenset(),
    Status.FAILURE: frozenset(),
    Status.REVOKED: frozenset(),
}
