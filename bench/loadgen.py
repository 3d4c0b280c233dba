"""The load generator: one process holding thousands of SSE streams, driven over stdin.

    taskset -c 1 .venv/bin/python -m bench.loadgen     (started by `bench.fleet`)

Two kinds of streams, both plain sockets on uvloop (no HTTP client library):
- a *timed* stream is an `asyncio.Protocol` that reads every event the moment it
  arrives and records its latency: (time of the read) - (its `ts`, set by the
  publisher), so it is end to end: publisher, Redis, server, kernel and this process;
- a *quiet* stream only counts its events: its socket sits in a private epoll set that
  is read every `QUIET_READ_SECONDS`, so one read takes several events. A client that
  reads 100 ms late changes nothing for the server (the kernel buffers a few KiB), and
  it cuts this process's cost per delivery several-fold, so the load generator is not
  what limits the rates measured. The harness times one stream in ten, spread evenly
  over the jobs and over the order in which each job's streams subscribed, and puts
  them all in a process of their own (`bench.fleet`): a sweep of thousands of quiet
  streams takes milliseconds, which would otherwise show up in their latencies.

Reads are scanned up to their last newline (whole lines only, `\\n` or `\\r\\n` as
sse-starlette ends them) and the `"ts":` of every event is pulled out with one regex
call per read; chunk-size lines of the chunked encoding never match it (every server
here sends each frame in a chunk of its own). Only events whose `ts` is at or after the
`since` of the last `reset` count, so late events of an earlier step never pollute the
next one. Commands and replies are JSON lines (see `COMMANDS`); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import re
import select
import socket
import struct
import sys
import time
from array import array
from collections import Counter
from typing import Any, cast

import uvloop

from bench.machine import raise_open_files_limit

TS = re.compile(rb'"ts":([0-9]+(?:\.[0-9]+)?)')
MAX_BUFFER = 1 << 20  # a stream that sends a megabyte without a newline is broken
QUIET_READ_SECONDS = 0.1
ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, no TIME_WAIT


class Tally:
    """What all the streams of this process received since the last reset."""

    def __init__(self) -> None:
        self.since = float("inf")  # nothing counts before the first reset
        self.latencies = array("d")  # seconds, one per event of a timed stream
        self.quiet = 0  # events counted on quiet streams
        self.last = 0.0  # when the last counted event arrived
        self.open = 0
        self.ended = 0  # streams the server closed

    def reset(self, since: float) -> None:
        self.since = since
        self.latencies = array("d")
        self.quiet = 0
        self.last = 0.0

    @property
    def received(self) -> int:
        return len(self.latencies) + self.quiet


class LineBuffer:
    """The response of one stream: status line, headers, then whole lines of events."""

    __slots__ = ("buffer", "status")

    def __init__(self) -> None:
        self.buffer = b""
        self.status = 0

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """Bytes to scan and the end of their last whole line (-1: nothing to scan)."""
        buffer = self.buffer + data if self.buffer else data
        self.buffer = b""
        if not self.status:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                self.buffer = buffer if len(buffer) < MAX_BUFFER else b""
                return b"", -1
            self.status = int(buffer[9:12])
            buffer = buffer[head_end + 4 :]
        end = buffer.rfind(b"\n")  # lines before it are whole, whatever the line ending
        if end < len(buffer) - 1:  # a line still incomplete: keep it for the next read
            self.buffer = buffer[end + 1 :] if len(buffer) - end < MAX_BUFFER else b""
        return buffer, end


class TimedStream(asyncio.Protocol):
    """A client that reads each event at once and records its latency."""

    __slots__ = ("answered", "lines", "request", "tally", "transport")

    def __init__(self, request: bytes, tally: Tally) -> None:
        self.request = request
        self.tally = tally
        self.lines = LineBuffer()
        self.transport: asyncio.Transport | None = None
        self.answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer, end = self.lines.feed(data)
        if not self.answered.done() and self.lines.status:
            self.answered.set_result(self.lines.status)
        if end <= 0:
            return
        found = TS.findall(buffer, 0, end)
        if found:
            now = time.time()
            tally = self.tally
            since, latencies = tally.since, tally.latencies
            counted = len(latencies)
            for raw in found:
                ts = float(raw)
                if ts >= since:
                    latencies.append(now - ts)
            if len(latencies) > counted:
                tally.last = now

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(exc or ConnectionResetError("closed before answering"))
        elif self.lines.status == 200:
            self.tally.open -= 1
            self.tally.ended += 1

    def abort(self) -> None:
        if not self.answered.done():
            self.answered.cancel()
        if self.transport is not None:
            self.transport.abort()


class QuietStream:
    """A client that only counts its events, read in bulk by `QuietStreams.sweep()`."""

    __slots__ = ("lines", "sock")

    def __init__(self, sock: socket.socket, lines: LineBuffer) -> None:
        self.sock = sock
        self.lines = lines

    def count(self, data: bytes, tally: Tally) -> None:
        buffer, end = self.lines.feed(data)
        if end <= 0:
            return
        since = tally.since
        counted = sum(1 for raw in TS.findall(buffer, 0, end) if float(raw) >= since)
        if counted:
            tally.quiet += counted
            tally.last = time.time()


class QuietStreams:
    """The quiet streams of this process, in one epoll set of their own."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.epoll = select.epoll()
        self.streams: dict[int, QuietStream] = {}

    def add(self, stream: QuietStream, first: bytes) -> None:
        stream.count(first, self.tally)
        self.streams[stream.sock.fileno()] = stream
        self.epoll.register(stream.sock.fileno(), select.EPOLLIN)

    def sweep(self) -> None:
        """Read every stream that has data (each read takes all it has, up to 256 KiB)."""
        if not self.streams:
            return
        for fd, _ in self.epoll.poll(0, len(self.streams)):
            stream = self.streams[fd]
            try:
                data = stream.sock.recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                stream.count(data, self.tally)
            else:  # the server ended the stream
                self._drop(fd)
                self.tally.open -= 1
                self.tally.ended += 1

    def _drop(self, fd: int) -> None:
        stream = self.streams.pop(fd)
        self.epoll.unregister(fd)
        stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
        stream.sock.close()

    def close(self) -> None:
        for fd in list(self.streams):
            self._drop(fd)

    async def read_forever(self) -> None:
        while True:
            self.sweep()
            await asyncio.sleep(QUIET_READ_SECONDS)


async def open_quiet(host: str, port: int, request: bytes) -> tuple[QuietStream, bytes]:
    """Connect, send the GET and read up to the end of the headers, on uvloop."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = await loop.sock_recv(sock, 1 << 16)
            if not chunk:
                raise ConnectionResetError("closed before answering")
            received += chunk
    except BaseException:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
        sock.close()
        raise
    return QuietStream(sock, LineBuffer()), received


class LoadGenerator:
    """The streams of this process and the commands that drive them."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.timed: list[TimedStream] = []
        self.quiet = QuietStreams(self.tally)
        self.open_by_path: Counter[str] = Counter()

    async def connect(
        self,
        host: str,
        port: int,
        paths: list[str],
        timed: list[bool],
        concurrency: int,
        handshake_s: float,
        within_s: float,
    ) -> dict[str, Any]:
        """Open one stream per path, at most `concurrency` handshakes at a time; those
        not started within `within_s` are not tried (a server that hangs every
        handshake would otherwise hold the ramp for paths / concurrency x handshake_s)."""
        outcomes: Counter[str] = Counter()
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()
        deadline = started + within_s

        async def one(path: str, is_timed: bool) -> None:
            async with gate:
                if time.monotonic() > deadline:
                    outcome = "not tried (ramp over time)"
                else:
                    outcome = await self._open(host, port, path, is_timed, handshake_s)
            outcomes[outcome] += 1
            if outcome == "ok":
                self.open_by_path[path] += 1

        await asyncio.gather(*(one(p, t) for p, t in zip(paths, timed, strict=True)))
        return {
            "established": outcomes.pop("ok", 0),
            "failed": dict(outcomes),
            "seconds": time.monotonic() - started,
            "open_by_path": dict(self.open_by_path),
        }

    async def _open(
        self, host: str, port: int, path: str, is_timed: bool, handshake_s: float
    ) -> str:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        try:
            async with asyncio.timeout(handshake_s):
                if is_timed:
                    status = await self._open_timed(host, port, request)
                else:
                    status = await self._open_quiet(host, port, request)
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            if exc.errno is None:
                return type(exc).__name__
            return errno.errorcode.get(exc.errno, f"errno {exc.errno}")
        if status != 200:
            return f"HTTP {status}"
        self.tally.open += 1
        return "ok"

    async def _open_timed(self, host: str, port: int, request: bytes) -> int:
        stream = TimedStream(request, self.tally)
        try:
            await asyncio.get_running_loop().create_connection(lambda: stream, host, port)
            status = await stream.answered
        except BaseException:
            stream.abort()
            raise
        if status == 200:
            self.timed.append(stream)
        else:
            stream.abort()
        return status

    async def _open_quiet(self, host: str, port: int, request: bytes) -> int:
        stream, first = await open_quiet(host, port, request)
        status = int(first[9:12])
        if status == 200:
            self.quiet.add(stream, first)
        else:
            stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
            stream.sock.close()
        return status

    def close(self) -> None:
        for stream in self.timed:
            stream.abort()  # RST: no TIME_WAIT left behind on loopback
        self.timed.clear()
        self.quiet.close()
        self.open_by_path.clear()

    def count(self) -> dict[str, Any]:
        self.quiet.sweep()
        return {
            "received": self.tally.received,
            "timed": len(self.tally.latencies),
            "last": self.tally.last,
            "open": self.tally.open,
            "ended": self.tally.ended,
        }

    def collect(self) -> dict[str, Any]:
        latencies = array("f", self.tally.latencies)  # float32: plenty for latencies
        return {**self.count(), "latencies": base64.b64encode(latencies.tobytes()).decode()}


COMMANDS = """
{"cmd": "connect", "host", "port", "paths": [...], "timed": [bool, ...], "concurrency",
 "timeout" (per handshake), "within" (the whole ramp)}
    -> {"established", "failed": {reason: n}, "seconds", "open_by_path"}
{"cmd": "reset", "since": unix_time}  -> {"ok": true}   count events with ts >= since
{"cmd": "count"}    -> {"received", "timed", "last", "open", "ended"}
{"cmd": "collect"}  -> count + {"latencies": base64 float32 seconds of the timed streams}
{"cmd": "close"}    -> {"ok": true}   abort every stream
{"cmd": "exit"}     -> (no reply) the process ends
"""


async def handle(gen: LoadGenerator, command: dict[str, Any]) -> dict[str, Any] | None:
    match command["cmd"]:
        case "connect":
            return await gen.connect(
                command["host"],
                command["port"],
                command["paths"],
                command["timed"],
                command.get("concurrency", 64),
                command.get("timeout", 10.0),
                command.get("within", 60.0),
            )
        case "reset":
            gen.tally.reset(float(command["since"]))
            return {"ok": True}
        case "count":
            return gen.count()
        case "collect":
            return gen.collect()
        case "close":
            gen.close()
            await asyncio.sleep(0.05)  # let the aborts reach the kernel
            gen.tally.open = gen.tally.ended = 0
            return {"ok": True}
        case "exit":
            return None
    raise ValueError(f"unknown command {command['cmd']!r}")


async def serve_commands(idle_timeout: float) -> None:
    """Read commands from stdin until `exit`, EOF, or `idle_timeout` without a command."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=256 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    gen = LoadGenerator()
    sweeper = asyncio.create_task(gen.quiet.read_forever())
    try:
        while True:
            async with asyncio.timeout(idle_timeout):
                line = await reader.readline()
            if not line:
                return
            reply = await handle(gen, json.loads(line))
            if reply is None:
                return
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        gen.close()


def main() -> None:
    raise_open_files_limit()
    uvloop.run(serve_commands(idle_timeout=float(sys.argv[1]) if len(sys.argv) > 1 else 600))


if __name__ == "__main__":
    main()
