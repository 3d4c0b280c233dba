"""Every Redis key and channel name of a job, and the fields of its hashes, in one place.

The job id sits in a Redis Cluster hash tag (`{<job_id>}`), so all of one job's keys and
its channel map to one slot and the publish script only ever touches one job. Ids are
validated here, before any name is built from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class StateField(StrEnum):
    """Fields of a job's state hash (`JobKeys.state`). The Lua scripts (`scripts.py`)
    name the first six literally: change them together."""

    SEQ = "seq"  #: the last accepted event's seq
    STATUS = "status"  #: its status
    ATTEMPT = "attempt"  #: the current attempt
    PERCENT = "percent"  #: the attempt's highest percent (never decreases)
    LEASE = "lease"  #: the running attempt's lease deadline, Redis time
    EVENT = "event"  #: the snapshot: the last event's JSON
    RUNNER = "runner"  #: which runner enqueued the job (for DELETE)
    PARENT = "parent"  #: the job's parent job, when it is a child (protocol/family.py)


class FileField(StrEnum):
    """Fields of a job's attached file hash (`JobKeys.file`)."""

    NAME = "name"
    CONTENT_TYPE = "content_type"
    SIZE = "size"  #: bytes in all
    CHUNKS = "chunks"  #: how many `chunk:<i>` fields hold the data
    CHUNK_PREFIX = "chunk:"  #: `chunk:0`, `chunk:1`, ...: the data in pieces


class InvalidJobId(ValueError):
    """A job id that does not match `^[A-Za-z0-9_-]{1,64}$`."""


def is_valid_job_id(job_id: object) -> bool:
    return isinstance(job_id, str) and JOB_ID_PATTERN.fullmatch(job_id) is not None


@dataclass(frozen=True, slots=True)
class JobKeys:
    """The names of one job's keys: state hash, history list, attached file, channel."""

    state: str
    history: str
    file: str
    channel: str

    @property
    def all_keys(self) -> tuple[str, str, str]:
        return (self.state, self.history, self.file)


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key names under one prefix (`PROGRESS_KEY_PREFIX`; tests use one per test)."""

    prefix: str

    def job(self, job_id: str) -> JobKeys:
        if not is_valid_job_id(job_id):
            raise InvalidJobId(f"invalid job id: {job_id[:80]!r}")
        base = f"{self.prefix}:{{{job_id}}}"
        return JobKeys(
            state=f"{base}:state",
            history=f"{base}:history",
            file=f"{base}:file",
            channel=f"{base}:events",
        )

    @property
    def leases(self) -> str:
        """Sorted set of running jobs by lease deadline: the sweeper's index."""
        return f"{self.prefix}:leases"

    def family(self, parent_id: str) -> str:
        """A parent job's family hash: its children, counts and their latest percents
        (protocol/family.py), in the parent's hash tag (its slot)."""
        return f"{self.job(parent_id).state.removesuffix(':state')}:family"

    @property
    def families(self) -> str:
        """Sorted set of unfinished parent jobs by next check time: the family sweeper's
        index (protocol/family_sweeper.py)."""
        return f"{self.prefix}:families"

    def arq_pending(self, queue_name: str) -> str:
        """Sorted set of the jobs the web app put on an ARQ queue and that have not started
        yet, by enqueue time: `ArqRunner.settle_pending` ends those ARQ failed unrun."""
        return f"{self.prefix}:arq:pending:{queue_name}"

    def post_bucket(self, endpoint: str, client_tag: str) -> str:
        """A client's token bucket for one POST endpoint (web/quotas.py)."""
        return f"{self.prefix}:quota:rate:{endpoint}:{{{client_tag}}}"

    def live_watches(self, client_tag: str) -> str:
        """Sorted set of a client's live watch ids, by expiry (web/quotas.py)."""
        return f"{self.prefix}:quota:live-watches:{{{client_tag}}}"

    def watch(self, watch_id: str) -> str:
        if not is_valid_job_id(watch_id):
            raise InvalidJobId(f"invalid watch id: {watch_id[:80]!r}")
        return f"{self.prefix}:watch:{{{watch_id}}}"

    def job_id_of_channel(self, channel: str) -> str | None:
        """The job id inside a channel name from this key space, else None."""
        head = f"{self.prefix}:{{"
        if not (channel.startswith(head) and channel.endswith("}:events")):
            return None
        job_id = channel[len(head) : -len("}:events")]
        return job_id if is_valid_job_id(job_id) else None
