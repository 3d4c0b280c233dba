"""Tokens never reach the logs: uvicorn's access log gets its query strings redacted."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

_QUERY_PARAM = re.compile(r"([?&])([^=&\s\"#]*)=([^&\s\"#]*)")
_SECRET_NAMES = frozenset({"token", "access_token"})


def redact(text: str) -> str:
    """Every `token=` value, whatever the spelling: Starlette decodes `%74oken` as `token`."""

    def hide(match: re.Match[str]) -> str:
        if unquote_plus(match[2]).strip().lower() in _SECRET_NAMES:
            return f"{match[1]}{match[2]}=REDACTED"
        return match[0]

    return _QUERY_PARAM.sub(hide, text)


class RedactTokens(logging.Filter):
    """Rewrites `?token=...` in uvicorn's access records (its 3rd argument is the path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install(logger_name: str = "uvicorn.access") -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactTokens) for f in logger.filters):
        logger.addFilter(RedactTokens())
