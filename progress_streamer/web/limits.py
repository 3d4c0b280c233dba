"""Limits: open streams per process and per client address, and the request body size."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from starlette.requests import Request

from progress_streamer.protocol.settings import Settings
from progress_streamer.web.errors import ApiError

RETRY_AFTER_SECONDS = 5


class StreamLimiter:
    """Counts open streams; `acquire` refuses beyond the caps with 503 too_many_streams."""

    def __init__(self, settings: Settings) -> None:
        self.max_streams = settings.max_streams
        self.max_per_client = settings.max_streams_per_client
        self.open = 0
        self._per_client: Counter[str] = Counter()

    def acquire(self, client: str) -> None:
        if self.open >= self.max_streams or self._per_client[client] >= self.max_per_client:
            raise ApiError(
                503,
                "too_many_streams",
                "too many open streams; retry later",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.open += 1
        self._per_client[client] += 1

    def release(self, client: str) -> None:
        self.open -= 1
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]


def client_address(request: Request) -> str:
    """The peer's address: the forwarded client's only when the peer is one of
    PROGRESS_TRUSTED_PROXIES (the app's proxy-headers middleware rewrote the scope then;
    the Procfile's uvicorn trusts no forwarded header itself, --no-proxy-headers)."""
    return request.client.host if request.client else "unknown"


MAX_JSON_DEPTH = 32  # our bodies need a handful of levels


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request's JSON body: 413 past `max_bytes` (without reading it all), 400 if bad."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not _nested_within(value, MAX_JSON_DEPTH):
        raise ApiError(400, "invalid_json", f"the body is nested over {MAX_JSON_DEPTH} levels")
    return value


def _nested_within(value: Any, limit: int) -> bool:
    """Whether no array or object in `value` lies deeper than `limit`. Checked without
    recursion: a body that parses can still be deep enough that code formatting it
    (`str()` in an error message) overflows the stack (RecursionError: a 500)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in children)
    return True


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is over {max_bytes} bytes")
