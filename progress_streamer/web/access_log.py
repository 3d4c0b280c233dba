"""Tokens never reach the logs: uvicorn's access records keep the path and lose the query.

Redacting parameters by name missed spellings that still carry a token (`a=1;token=`,
`token%00=`, `token[]=`, `"token=`, a token with no name at all), so no part of a query
is logged: `/api/v1/jobs/abc?token=...` is logged as `/api/v1/jobs/abc?REDACTED`.
"""

from __future__ import annotations

import logging
import re

REDACTED = "?REDACTED"
# A query inside a preformatted line: from `?` to the end of the request target (a raw
# request target holds no whitespace; a quote or a `#` does not end it here).
_QUERY_IN_TEXT = re.compile(r"\?\S*")


def without_query(target: str) -> str:
    """The request target's path, and a marker where its query was (uvicorn quotes a `?`
    inside the path, so the first `?` starts the query)."""
    path, sep, _ = target.partition("?")
    return path + REDACTED if sep else target


class DropQueries(logging.Filter):
    """Drops the query from each argument of an access record (uvicorn's 3rd is the
    target) and from a preformatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(without_query(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = _QUERY_IN_TEXT.sub(lambda _: REDACTED, record.msg)
        return True


def install(logger_name: str = "uvicorn.access") -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DropQueries) for f in logger.filters):
        logger.addFilter(DropQueries())
