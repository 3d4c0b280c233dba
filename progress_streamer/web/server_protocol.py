"""The server's HTTP protocol: uvicorn's httptools protocol with the request's edge bounded.

The Procfile serves with it (`uvicorn ... --http
progress_streamer.web.server_protocol:BoundedHttpToolsProtocol`). uvicorn's own protocol
keeps three doors open that it closes:

- **The head's size.** uvicorn buffers a request line and headers of any size: one client
  sending a 128 MB header grew the process by 250 MB and stalled every other client for
  seconds. Here the bytes of a request's head are counted as they arrive; once they pass
  `PROGRESS_MAX_HEADER_BYTES` the request is answered `431` and its connection closed at
  once, without reading (or parsing) the rest. A head that arrives whole in one read is
  measured once complete, before any of the app runs.
- **The time a request takes to arrive.** uvicorn waits forever for a request that never
  ends (half a request line, a body that stops): 1,000 such connections were all still
  held after 65 s. Here a request must arrive whole, head and body, within
  `PROGRESS_REQUEST_TIMEOUT` seconds of the connection (or, on a kept-alive one, of its
  first byte); past it the connection is closed, with `408` if its head was not complete.
- **The number of connections.** Past `PROGRESS_MAX_CONNECTIONS` (or what the process's
  open-files limit allows: open_files.py), a new connection is answered `503` with
  `Retry-After` and closed at once, so the process never runs out of descriptors (which
  stops it accepting anyone, `/healthz` included) and keeps no more than it can hold.

It also tells an event stream when its client left (`tell_when_lost`, called from
`connection_lost`), so the keep-alive sweep need not poll every stream for it
(streaming/keepalive.py, streaming/direct_writer.py).

Deliberate choices:

- Once a request has arrived, a chunk of incoming data costs one integer test more than
  under uvicorn's protocol (an event stream's client sends nothing after its request
  anyway), and responses are uvicorn's own code: the request-response cycle is uvicorn's
  `RequestResponseCycle`, so streams keep their direct writes
  (streaming/direct_writer.py checks exactly that class). A request costs one timer.
- A later request on a kept-alive connection is counted from the read after the one
  it starts in (where it starts inside a read is the parser's secret); its head is
  still measured whole once complete and refused before the app runs, so at most one
  read (256 KiB) more of it is parsed.
- The deadline covers pipelined requests too: a request queued behind a response that
  is still being sent must still have arrived whole in time.
- Refusals are SPEC.md's JSON errors, sent straight on the transport (no app runs), and
  only when no earlier response of the connection is still being sent; then the
  connection is just closed.
- The limits come from the environment, read once per process at the first connection
  (`Settings.from_env`, as the app factory reads it), or from `with_limits` for a
  server started in code.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from progress_streamer.protocol.settings import Settings
from progress_streamer.web.open_files import connections_allowed

# The bytes of a head besides what the parser hands over: the spaces and " HTTP/1.1" of
# the request line, ": " of a header, each line's CRLF, and the blank line's.
_REQUEST_LINE_EXTRA = len(" HTTP/1.1\r\n") + 1 + len("\r\n")
_HEADER_LINE_EXTRA = len(": \r\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """What one connection may send."""

    max_head_bytes: int  # request line and headers, CRLFs included
    request_timeout: float  # seconds for a request to arrive whole
    max_connections: int  # connections of the process, this one included

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        """The settings' limits; the connection cap within the open-files limit (which
        this raises as far as it can)."""
        return cls(
            max_head_bytes=settings.max_header_bytes,
            request_timeout=settings.request_timeout,
            max_connections=connections_allowed(settings),
        )


@functools.cache
def limits_from_env() -> ConnectionLimits:
    return ConnectionLimits.of(Settings.from_env())


def error_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
    ]


@functools.cache
def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@functools.cache  # a handful of distinct answers, sent to many connections at once
def error_answer(status: int, body: bytes, *extra: tuple[bytes, bytes]) -> bytes:
    """A whole HTTP/1.1 response in SPEC.md's error shape that closes the connection."""
    headers = [*error_headers(body), *extra]
    return b"".join([STATUS_LINE[status], *(b"%s: %s\r\n" % h for h in headers), b"\r\n", body])


RETRY_AFTER_SECONDS = 5  # told to a connection refused over the cap


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head, a deadline for each request to
    arrive, and a cap on the process's connections."""

    limits: ClassVar[ConnectionLimits | None] = None  # None: from the environment

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = self.current_limits()
        # Bytes received of the request head being read; -1 once the head is complete
        # (until the next request begins), so later chunks skip the count.
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None  # while a request is arriving
        self._when_lost: Callable[[], object] | None = None  # tell_when_lost's callback
        self._lost = False

    @classmethod
    def current_limits(cls) -> ConnectionLimits:
        """The limits connections get: those given to `with_limits`, or the environment's
        (read, and the open-files limit raised, once per process)."""
        return cls.limits or limits_from_env()

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[BoundedHttpToolsProtocol]:
        """This protocol with `limits` instead of the environment's (for uvicorn.Config)."""
        return type(cls.__name__, (cls,), {"limits": limits, "__module__": cls.__module__})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._limits.max_connections:
            self.transport = transport  # uvicorn's connection_lost closes it again
            body = error_body("too_many_connections", "too many connections; retry later")
            retry = (b"retry-after", b"%d" % RETRY_AFTER_SECONDS)
            transport.write(error_answer(503, body, retry))
            transport.close()
            return
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)
        self._lost = True
        told, self._when_lost = self._when_lost, None
        if told is not None:
            told()

    def tell_when_lost(self, callback: Callable[[], object] | None) -> None:
        """Call back when the connection is lost: an event stream's direct writer ends
        the stream at once, instead of the keep-alive sweep polling for it
        (streaming/keepalive.py). One at a time: the response now being sent's (a later
        response on the kept-alive connection replaces it); None forgets it (the stream
        ended, so the connection holds no finished stream)."""
        if callback is not None and self._lost:
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._when_lost = callback

    def data_received(self, data: bytes) -> None:
        if self._head_bytes < 0:  # a complete head: uvicorn's path, untouched
            super().data_received(data)
            return
        room = self._limits.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Past the bound unless the head ends within `room`: the parser sees that much
        # and no more (a read can be 256 KiB; a refusal then costs 16 KiB of parsing).
        self._head_bytes += room
        super().data_received(data[:room])
        if self._head_bytes == self._limits.max_head_bytes:  # the same head, still open
            self._close_with(431, self._too_large_body())
        elif not (self.transport.is_closing() or self.parser.should_upgrade()):
            super().data_received(data[room:])  # the body, or the next request

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_bytes < 0:  # the next request on the connection
            self._head_bytes = 0
        if self._deadline is None:
            self._arm_deadline()

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        if self._head_size() > self._limits.max_head_bytes:
            # The whole head came in one read: refused before the app starts. The
            # parser goes on with the rest of the chunk; the stand-in app answers.
            self.app = self._too_large_app
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()  # arrived whole: the response may take as long as it needs
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._cancel_deadline()  # the connection is the WebSocket protocol's from here
        super().handle_websocket_upgrade()

    def _arm_deadline(self) -> None:
        self._deadline = self.loop.call_later(self._limits.request_timeout, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        """The request did not arrive whole in time: 408 if its head was incomplete (no
        app runs for it), else close (the app reading its body sees a disconnect)."""
        self._deadline = None
        if self._head_bytes >= 0:
            timeout = self._limits.request_timeout
            message = f"the request did not arrive whole within {timeout:g} s"
            self._close_with(408, error_body("request_timeout", message))
        elif not self.transport.is_closing():
            self.transport.close()

    def _head_size(self) -> int:
        request_line = len(self.parser.get_method()) + len(self.url) + _REQUEST_LINE_EXTRA
        return request_line + sum(len(n) + len(v) + _HEADER_LINE_EXTRA for n, v in self.headers)

    def _close_with(self, status: int, body: bytes) -> None:
        """Answer `status` and close, at once; only close while an earlier response of
        the connection is still being sent (a pipelined request's refusal)."""
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(error_answer(status, body))
        self.transport.close()

    def _too_large_body(self) -> bytes:
        bound = self._limits.max_head_bytes
        return error_body(
            "headers_too_large", f"the request line and headers are over {bound} bytes"
        )

    async def _too_large_app(self, scope: Any, receive: Any, send: Any) -> None:
        body = self._too_large_body()
        await send({"type": "http.response.start", "status": 431, "headers": error_headers(body)})
        await send({"type": "http.response.body", "body": body})
