"""What the web process needs in open files for its caps, and raising its limit to that.

Every client connection holds a file descriptor, and so do the Redis connections, the
listening socket and the logs. `connections_allowed` raises the process's soft limit
toward `PROGRESS_MAX_CONNECTIONS + RESERVED_FILES` (up to the hard limit, which needs no
privilege) and returns how many client connections fit: the protocol
(server_protocol.py) refuses connections beyond it, so the process never runs out of
descriptors (which would stop it accepting anyone, `/healthz` included).
"""

from __future__ import annotations

import logging
import resource

from progress_streamer.protocol.settings import Settings

log = logging.getLogger(__name__)

# Descriptors besides client connections: the command pool (64) and the hub's connection
# to Redis, the runners' broker connections, the listening socket, stdio, the event
# loop's own, with room to spare.
RESERVED_FILES = 256


def open_files_needed(settings: Settings) -> int:
    return settings.connection_cap + RESERVED_FILES


def raise_open_files(wanted: int) -> int:
    """Raise the soft limit toward `wanted` (never past the hard one); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return wanted if soft == resource.RLIM_INFINITY else soft


def connections_allowed(settings: Settings) -> int:
    """The connection cap the process can keep: `settings.connection_cap`, lowered (with
    a warning) when the open-files limit cannot be raised high enough for it."""
    wanted = open_files_needed(settings)
    limit = raise_open_files(wanted)
    if limit >= wanted:
        return settings.connection_cap
    allowed = max(limit - RESERVED_FILES, 1)
    log.warning(
        "the open-files limit is %d, PROGRESS_MAX_CONNECTIONS=%d needs %d: at most %d "
        "connections are taken (raise the hard limit, e.g. ulimit -n %d)",
        limit, settings.connection_cap, wanted, allowed, wanted,
    )  # fmt: skip
    return allowed
