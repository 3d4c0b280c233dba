"""Writing a stream's frames straight to the client's socket, from the hub's fan-out.

The hub hands every live event to each subscriber of its job. Through ASGI, each of those
deliveries would wake the client's task, run it through a handful of coroutine frames and
a `send` call, only to end in one `transport.write`: that machinery, not the write, was
most of the CPU a delivery cost (docs/benchmarks.md). So while a client is keeping up
(nothing queued, its writer parked, the socket accepting data), the fan-out writes the
frame itself, synchronously, and no task runs at all.

It needs the server's transport, which ASGI does not expose. Under uvicorn's httptools
protocol (the Procfile's `--http` is `web/server_protocol.py`'s subclass of it, which
keeps uvicorn's cycle), the server's `send` is a bound method of its
`RequestResponseCycle`, which holds the transport, its flow control and the response's
chunked framing; `DirectWriter.of` accepts exactly that and nothing else, and the stream
falls back to plain ASGI sends under any other server or protocol. Whatever the direct
path cannot do at once, it refuses (returns False): the frame is then queued and the
client's own task sends it through ASGI, with the send timeout. That covers a paused
socket (a slow client: backpressure and coalescing work as before), a closed one, and a
finished response. tests/web/streaming/test_direct_writer.py checks that the fast path is
taken under the Procfile's server, so an uvicorn upgrade that changes these internals
fails a test instead of quietly costing the speed; pyproject.toml caps uvicorn below its
next minor version for the same reason, and the first stream that cannot take the fast
path logs one warning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.types import Send

HTTPTOOLS_CYCLE = "uvicorn.protocols.http.httptools_impl"


class DirectWriter:
    """Writes body chunks in the response's chunked framing, or refuses."""

    __slots__ = ("_cycle", "_flow", "_transport")
    _last: tuple[object, bytes] = (object(), b"")  # the last body written, and its chunk

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self._flow = cycle.flow
        self._transport: asyncio.Transport = cycle.transport

    @classmethod
    def of(cls, send: Send) -> DirectWriter | None:
        """For the server's own `send` after the response started, if it is uvicorn's
        httptools cycle with a chunked body; None otherwise (ASGI sends then)."""
        cycle: Any = getattr(send, "__self__", None)
        kind = type(cycle)
        if (kind.__module__, kind.__name__) != (HTTPTOOLS_CYCLE, "RequestResponseCycle"):
            return None
        if not all(hasattr(cycle, name) for name in ("transport", "flow", "disconnected")):
            return None
        if cycle.chunked_encoding is not True or not hasattr(cycle.flow, "write_paused"):
            return None
        return cls(cycle)

    @property
    def gone(self) -> bool:
        """The client's connection is lost (uvicorn saw it close)."""
        return bool(self._cycle.disconnected)

    def when_gone(self, callback: Callable[[], object] | None) -> bool:
        """Have the server protocol call back when the connection is lost (None: no
        longer): the Procfile's (web/server_protocol.py) can; uvicorn's own cannot, and
        its streams are polled."""
        protocol = self._transport.get_protocol()
        tell = getattr(protocol, "tell_when_lost", None)
        if tell is None:
            return False
        tell(callback)
        return True

    def write(self, body: bytes) -> bool:
        """True if written now; False if the client's task must send it (then nothing was
        written, so order is kept by queueing it behind whatever else waits)."""
        cycle = self._cycle
        if cycle.disconnected or cycle.response_complete or self._flow.write_paused:
            return False
        transport = self._transport
        if transport.is_closing():
            return False
        if not body:
            return True  # an empty chunk would end the response
        # The fan-out writes the same frame to every client of a job in a row: frame the
        # chunk once for all of them.
        cached = DirectWriter._last
        if cached[0] is not body:
            cached = DirectWriter._last = (body, b"%x\r\n%s\r\n" % (len(body), body))
        try:
            transport.write(cached[1])
        except (RuntimeError, OSError):  # closed under us: the client's task sees it
            return False
        return True
