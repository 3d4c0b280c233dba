"""Helpers of the reliability suite: the production web command as a subprocess, a raw
socket SSE client (cheap enough for hundreds of concurrent streams, and able to freeze or
vanish mid-response), and the process figures (RSS, fds, tasks) that leak checks compare.

Figures each scenario observed are printed, and appended as JSON lines to the file named
by `RELIABILITY_FIGURES` when it is set (docs/reliability.md quotes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from app.procfile import command_of
from progress_streamer.protocol.settings import Settings
from progress_streamer.redis_server import free_port
from tests.support import ROOT
from tests.support.server import SSEEvent, SSEParser, SSEStream


def report(scenario: str, **figures: Any) -> None:
    """Print what a scenario observed (and keep it for docs/reliability.md)."""
    line = json.dumps({"scenario": scenario, **figures}, default=str)
    print(f"\nRELIABILITY {line}")
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:
        with open(target, "a") as out:
            out.write(line + "\n")


def raise_open_files(wanted: int = 16384) -> None:
    """Hundreds of streams need more fds than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def until(check: Callable[[], Any], within: float, what: str = "condition") -> float:
    """Await `check()` (sync or async) becoming true; returns the seconds it took."""
    start = time.monotonic()
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"{what} not met within {within}s")
        await asyncio.sleep(0.05)


def web_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "PROGRESS_KEY_PREFIX": settings.key_prefix,
        "PROGRESS_AUTH": "none",
        "PYTHONPATH": str(ROOT),
    }
    env.update(extra)
    return env


class WebProcess:
    """The Procfile's web command (production factory, uvloop, its protocol) on a free
    port of the loopback; `preexec` runs in the child before it starts (limits...)."""

    def __init__(
        self,
        settings: Settings,
        *,
        graceful: float = 5,
        preexec: Callable[[], None] | None = None,
        **env: str,
    ) -> None:
        self.port = free_port()
        self.logfile = Path(tempfile.mkstemp(prefix="web-", suffix=".log")[1])
        environ = web_env(settings, **env)
        command = command_of(
            "web", environ, "--host", "127.0.0.1", "--port", str(self.port),
            "--timeout-graceful-shutdown", str(graceful), "--log-level", "warning",
            "--backlog", "4096",
        )  # fmt: skip
        with self.logfile.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=preexec,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def wait_ready(self, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()[-3000:]
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"the web process did not start: {self.log()[-3000:]}")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def sockets_to(self, port: int) -> int:
        """The process's TCP connections to `port` (its Redis connections)."""
        inodes = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        count = 0
        for line in Path(f"/proc/{self.pid}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            count += remote_port == port and fields[9] in inodes
        return count

    async def metrics(self, client: httpx.AsyncClient) -> dict[str, float]:
        text = (await client.get(self.url + "/metrics")).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.logfile.unlink(missing_ok=True)


@contextmanager
def web_process(settings: Settings, **env: Any) -> Iterator[WebProcess]:
    web = WebProcess(settings, **env)
    try:
        web.wait_ready()
        yield web
    finally:
        web.stop()


class RawStream:
    """One SSE request over a bare socket: HTTP/1.1, chunked body, WHATWG parsing.

    Unlike httpx it costs almost nothing per stream, and it can stop reading (a frozen
    client) or vanish with a TCP reset at any byte.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.record = SSEStream(response=None)  # type: ignore[arg-type]
        self.parser = SSEParser(self.record)
        self.ended = False  # the server finished the response (the last chunk came)

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str,
        *,
        last_event_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        rcvbuf: int | None = None,
        send: bool = True,
    ) -> RawStream:
        sock = socket.socket()
        if rcvbuf is not None:  # before connect, so the window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        stream = cls(reader, writer)
        if send:
            stream.send_request(path, last_event_id=last_event_id, headers=headers)
        return stream

    def send_request(
        self,
        path: str,
        *,
        last_event_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def read_head(self) -> int:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed before the status line")
        self.status = int(status_line.split()[1])
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        return self.status

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body; None at its end."""
        if self.headers.get("transfer-encoding") != "chunked":
            length = int(self.headers.get("content-length", "0"))
            body = await self.reader.readexactly(length) if length else b""
            self.ended = True
            return body or None
        size = int((await self.reader.readline()).split(b";")[0], 16)
        data = await self.reader.readexactly(size + 2)
        if size == 0:
            self.ended = True
            return None
        return data[:-2]

    async def events(self) -> list[SSEEvent]:
        """Events of the next chunk(s) until at least one dispatched or the body ended."""
        while True:
            chunk = await self.next_chunk()
            if chunk is None:
                return []
            got = self.parser.feed(chunk)
            if got:
                return got

    async def read_to_end(self) -> list[SSEEvent]:
        while (chunk := await self.next_chunk()) is not None:
            self.parser.feed(chunk)
        return self.record.events

    @property
    def last_event_id(self) -> str | None:
        return self.record.last_event_id

    def abort(self) -> None:
        """Vanish: close with a TCP reset (SO_LINGER 0), as a killed browser tab may."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def seqs_of(events: list[SSEEvent]) -> list[int]:
    return [json.loads(e.data)["seq"] for e in events]


def status_of(event: SSEEvent) -> str:
    status: str = json.loads(event.data)["status"]
    return status


class Blackhole:
    """A TCP proxy to Redis whose path can die silently, as a dead network link does.

    `cut()` makes every connection through it swallow bytes both ways without ever
    closing (half-open TCP: no FIN, no RST), including connections opened during the cut.
    `restore()` lets new connections through; the ones from before stay dead for good.
    It runs its own event loop in a thread, so the test's loop cannot stall it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._epoch = 0
        self._cut = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> Blackhole:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self._server = future.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def cut(self) -> None:
        self._cut = True

    def restore(self) -> None:
        self._epoch += 1
        self._cut = False

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def _close(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        epoch = self._epoch
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]

        def alive() -> bool:
            return epoch == self._epoch and not self._cut

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if alive():
                    dst.write(data)
            if alive():
                dst.transport.abort()  # a live path passes the close on; a dead one never

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
