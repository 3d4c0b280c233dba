"""The stream writer: an ASGI `text/event-stream` response fed by a `FrameSource`.

A lean writer rather than sse-starlette's per-connection machinery (a task group, a ping
task and a shutdown watcher per stream): frames arrive pre-encoded from the hub, pings
and lifetimes come from one shared sweep (`streaming/keepalive.py`), so a stream costs one
task (the request's own). Deliberate choices:
- the first bytes are `retry: 2000` and a comment, so headers and `open` go out at once;
- once they are out, frames are written straight to the socket by the hub's fan-out
  while the client keeps up (`streaming/direct_writer.py`); this task sends only what had to be
  queued (the replay, a backlog behind a slow client) and ends the response;
- every send of this task has `PROGRESS_SEND_TIMEOUT`: a client that reads nothing is
  dropped (uvicorn then closes its socket and logs that the response was not completed);
- a client that left frees its subscription when it leaves, not at the next event: under
  the Procfile's protocol its `connection_lost` tells the direct writer; under uvicorn's
  own httptools protocol the keep-alive sweep polls the writer's `gone` (within a
  quarter second); without the direct writer (another server), a listener task per
  stream watches for `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.types import Receive, Scope, Send

from progress_streamer.web.metrics import Metrics
from progress_streamer.web.streaming.direct_writer import DirectWriter
from progress_streamer.web.streaming.frames import OPENING
from progress_streamer.web.streaming.subscriber import Sink

log = logging.getLogger(__name__)

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
]


# The scope key where ProgressApp (app/main.py) takes a started stream to run it itself.
PARKED = "progress.parked_stream"


class FrameSource(Protocol):
    """Where a stream's bytes come from; `None` ends the response."""

    async def next_frame(self) -> bytes | None: ...

    def attach(self, sink: Sink) -> None:
        """From now on, frames may go straight to the client (`direct_writer.py`)."""

    def disconnected(self) -> None: ...


class EventStreamResponse:
    """Writes `first`, then the source's frames, until it ends or the client leaves."""

    def __init__(
        self,
        source: FrameSource,
        *,
        first: bytes,
        send_timeout: float,
        metrics: Metrics,
        on_close: Callable[[], Awaitable[None]],
    ) -> None:
        self.source = source
        self.first = OPENING + first
        self.send_timeout = send_timeout
        self.metrics = metrics
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") == "HEAD":  # the headers a GET would get; no stream held open
            try:
                await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await self.on_close()
            return
        try:  # through the middleware: Referrer-Policy, CORS
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        except BaseException:
            await self.on_close()
            raise
        if PARKED in scope:  # under ProgressApp, the rest runs from the top (app/main.py)
            scope[PARKED] = self
            return
        await self.run(receive, send)

    async def run(self, receive: Receive, send: Send) -> None:
        """The body, from the first bytes to the end; frees what the stream holds."""
        writer = DirectWriter.of(send)
        if writer is None:
            _warn_once_without_direct_writes(send)
        # With the direct writer, the server protocol tells of a client that left (or the
        # sweep polls `writer.gone`); elsewhere, a listener task waits for `http.disconnect`.
        listener = None
        if writer is None:
            listener = asyncio.create_task(self._listen_for_disconnect(receive))
        try:
            await self._send(send, self.first)
            if writer is not None:
                self.source.attach(writer)
            while (frame := await self.source.next_frame()) is not None:
                await self._send(send, frame)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            self.metrics.slow_clients_dropped.inc()
            log.info("dropped a stream whose client read nothing for %ss", self.send_timeout)
        finally:
            if writer is not None:
                writer.when_gone(None)  # a later request on the connection is not ours
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            await self.on_close()

    async def abandon(self) -> None:
        """Free what the stream holds when it will never `run` (the app failed after)."""
        await self.on_close()

    async def _send(self, send: Send, body: bytes) -> None:
        async with asyncio.timeout(self.send_timeout):
            await send({"type": "http.response.body", "body": body, "more_body": True})

    async def _listen_for_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.source.disconnected()


_warned = False


def _warn_once_without_direct_writes(send: Send) -> None:
    """Say once per process that streams take the slower ASGI path (direct_writer.py):
    under another server, or an uvicorn whose internals changed."""
    global _warned
    if not _warned:
        _warned = True
        server = getattr(send, "__self__", send)
        log.warning(
            "event streams use plain ASGI sends under %s.%s: frames cannot be written "
            "straight to the socket (that needs uvicorn's httptools protocol, "
            "`--http httptools`, and the app served at the top: mounted in another app, "
            "the host's middleware wraps the server's send); streams work, at a higher "
            "CPU cost per event",
            type(server).__module__,
            type(server).__qualname__,
        )
