"""Every error answer as SPEC.md's JSON: `{"error": {"code": ..., "message": ...}}`.

Routes raise `ApiError`; the handlers here also turn Starlette's own 404/405, a Redis
failure (503 `not_ready`), state in Redis this service cannot read (500 `internal`
saying so: retrying cannot help, so it is not a 503) and any unhandled exception (500
`internal`, no traceback in the body) into the same shape. A client gone while its body
was read gets nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from progress_streamer.protocol.history import CorruptState, is_wrong_type

log = logging.getLogger(__name__)

_CODE_OF_STATUS = {
    400: "invalid_json",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    503: "not_ready",
}


class ApiError(Exception):
    """An answer other than success: status, SPEC.md error code, message, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODE_OF_STATUS.get(exc.status_code, "internal")
    headers = dict(exc.headers or {})
    return error_response(exc.status_code, code, str(exc.detail), headers)


async def redis_unavailable(request: Request, exc: Exception) -> Response:
    """Redis down, stopped or timing out: a retryable 503, not an `internal` 500."""
    if is_wrong_type(exc):  # Redis answered: it is the data, not an outage
        unreadable = CorruptState("a key this request reads", "a key of the wrong type")
        return await corrupt_state(request, unreadable)
    log.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "not_ready", "Redis is unavailable", {"Retry-After": "2"})


async def corrupt_state(request: Request, exc: Exception) -> Response:
    """State in Redis that this service did not write: say so, once per request, no
    traceback (it is not a bug of this process)."""
    detail = getattr(exc, "detail", "")
    log.warning("unreadable state on %s %s: %s %s", request.method, request.url.path, exc, detail)
    return error_response(500, "internal", str(exc))


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client left (or was cut off by the request deadline, server_protocol.py) while
    its body was being read: nobody is there to answer, and nothing to log."""
    return Response(status_code=400)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    headers = {"Referrer-Policy": "no-referrer"}  # outside the middleware that adds it
    return error_response(500, "internal", "internal server error", headers)


EXCEPTION_HANDLERS = {
    ApiError: api_error,
    HTTPException: http_error,
    CorruptState: corrupt_state,
    RedisError: redis_unavailable,
    ClientDisconnect: client_gone,
    Exception: internal_error,
}
