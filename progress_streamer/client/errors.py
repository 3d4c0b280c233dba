"""What a client call can fail with, named after the condition, and how an answer is read."""

from __future__ import annotations

from typing import Any

import httpx


class ProgressClientError(Exception):
    """An answer the call cannot go on from; `status` and `code` are the server's."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Unauthorized(ProgressClientError):
    """401: a missing, malformed, forged or expired token (or API key)."""


class Forbidden(ProgressClientError):
    """403: a valid token for another job or watch, or a view-only one on cancel."""


class JobNotFound(ProgressClientError):
    """404: no such job (or watch), or it has expired."""


class Conflict(ProgressClientError):
    """409: cancelling a finished job, or downloading before the end."""


class Unreachable(ProgressClientError):
    """The server did not answer (or only with errors) for too many tries in a row."""


_BY_STATUS = {401: Unauthorized, 403: Forbidden, 404: JobNotFound, 409: Conflict}


def error_of(status: int, body: Any) -> ProgressClientError:
    """The error for a non-2xx answer, from SPEC.md's `{"error": {"code", "message"}}`."""
    error = body.get("error") if isinstance(body, dict) else None
    code = str(error.get("code", "")) if isinstance(error, dict) else f"http_{status}"
    message = str(error.get("message", "")) if isinstance(error, dict) else str(body)[:200]
    return _BY_STATUS.get(status, ProgressClientError)(status, code, message)


def body_of(response: httpx.Response) -> Any:
    """An answer's JSON, or its text when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return response.text


def json_of(response: httpx.Response) -> dict[str, Any]:
    """A successful answer's JSON object; the matching error for any other answer."""
    body = body_of(response)
    if not response.is_success:
        raise error_of(response.status_code, body)
    return body if isinstance(body, dict) else {}
