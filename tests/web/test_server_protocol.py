"""The Procfile's HTTP protocol (`progress_streamer/web/server_protocol.py`): request heads
bounded, requests due whole within a deadline, connections capped; everything else as
uvicorn's httptools protocol does it."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.server_protocol import BoundedHttpToolsProtocol, ConnectionLimits
from tests.support.server import ServerThread, eventually, open_sse, publisher, running_server

BOUND = 2048
DEADLINE = 0.5
CAP = 6


def bounded(**changes: Any) -> type[BoundedHttpToolsProtocol]:
    limits = {"max_head_bytes": BOUND, "request_timeout": DEADLINE, "max_connections": 10_000}
    return BoundedHttpToolsProtocol.with_limits(ConnectionLimits(**{**limits, **changes}))


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    with running_server(settings, http=bounded()) as server:
        yield server


def head_of(size: int, path: str = "/healthz") -> bytes:
    """A GET whose request line and headers are exactly `size` bytes."""
    start = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Pad: ".encode()
    pad = size - len(start) - 4
    assert pad >= 0
    return start + b"p" * pad + b"\r\n\r\n"


def answer(sock: socket.socket) -> bytes:
    """Everything until the server closes (or one response on a kept-alive one)."""
    sock.settimeout(5)
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
        head, sep, body = bytes(data).partition(b"\r\n\r\n")
        length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-")]
        sizes = [int(line.split(b":")[1]) for line in length if b"length" in line.lower()]
        if sep and sizes and len(body) >= sizes[0]:
            break
    return bytes(data)


def connect(server: ServerThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_a_head_at_the_bound_is_served_one_byte_more_gets_431(server: ServerThread) -> None:
    with connect(server) as sock:
        sock.sendall(head_of(BOUND))
        assert answer(sock).startswith(b"HTTP/1.1 200 ")
    with connect(server) as sock:
        sock.sendall(head_of(BOUND + 1))  # whole, in one write
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in reply.lower()
    body = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "headers_too_large"


def test_a_growing_head_is_refused_as_it_crosses_the_bound_unread(server: ServerThread) -> None:
    """The answer comes before the client has sent the rest: nothing waits for the end."""
    piece = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200
    with connect(server) as sock:
        sent = 0
        sock.sendall(piece)
        sent += len(piece)
        sock.settimeout(0.05)
        reply = b""
        while not reply and sent < 100 * BOUND:
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                try:
                    sock.sendall(b"a" * 256)
                    sent += 256
                except OSError:
                    break  # closed under us: the answer may already be in
        if not reply:
            sock.settimeout(5)
            reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431 "), reply
    assert BOUND < sent <= BOUND + 3 * 256 + len(piece), sent


def test_the_bound_is_per_request_on_a_kept_alive_connection(server: ServerThread) -> None:
    with connect(server) as sock:
        for _ in range(5):  # 5 x 1.5 KiB: over the bound together, under it each
            sock.sendall(head_of(BOUND * 3 // 4))
            assert answer(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(head_of(BOUND + 1))  # measured whole, once complete: before the app
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 431 "), reply
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "headers_too_large"


def test_a_body_in_the_same_read_as_the_head_is_not_counted(server: ServerThread) -> None:
    body = json.dumps({"task": "demo.nothing", "params": {"pad": "x" * (8 * BOUND)}}).encode()
    head = (
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with connect(server) as sock:
        sock.sendall(head + body)
        reply = answer(sock)
    assert not reply.startswith(b"HTTP/1.1 431"), reply
    assert reply.startswith(b"HTTP/1.1 4"), reply  # the app's own answer (unknown task)


def test_pipelined_requests_each_get_their_answer(server: ServerThread) -> None:
    with connect(server) as sock:
        sock.sendall(head_of(300) * 3)
        time.sleep(0.2)
        sock.settimeout(5)
        data = b""
        while data.count(b"HTTP/1.1 200 ") < 3:
            data += sock.recv(65536)


def closed_after(sock: socket.socket, within: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before."""
    started = time.monotonic()
    sock.settimeout(within)
    data = bytearray()
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return time.monotonic() - started, bytes(data)


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1"],
    ids=["nothing", "half a request line", "half the headers"],
)
def test_a_request_that_does_not_arrive_whole_in_time_gets_408(
    server: ServerThread, sent: bytes
) -> None:
    with connect(server) as sock:
        sock.sendall(sent)
        took, reply = closed_after(sock, 10 * DEADLINE)
    assert DEADLINE * 0.8 <= took < DEADLINE + 1.0
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"


def test_a_body_that_stops_halfway_closes_the_connection(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"task": '
        )
        took, reply = closed_after(sock, 10 * DEADLINE)
    assert DEADLINE * 0.8 <= took < DEADLINE + 1.0
    assert not reply.startswith(b"HTTP/1.1 2"), reply
    time.sleep(0.1)  # the app's task sees the disconnect: quietly
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_kept_alive_connection_gets_the_deadline_for_each_request(
    server: ServerThread,
) -> None:
    with connect(server) as sock:
        for _ in range(3):  # requests spread over more than the deadline: each in time
            time.sleep(DEADLINE / 2)
            sock.sendall(head_of(200))
            assert answer(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /hea")
        took, reply = closed_after(sock, 10 * DEADLINE)
    assert took < DEADLINE + 1.0 and reply.startswith(b"HTTP/1.1 408 "), (took, reply)


async def test_a_stream_lasts_past_the_deadline(settings: Settings) -> None:
    """The deadline is for the request to arrive, not for the response."""
    pub = publisher(settings)
    job = "a" * 32
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    with running_server(settings, http=bounded()) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with open_sse(client, f"/api/v1/jobs/{job}/events") as (_, events):
                assert (await anext(events)).id == "1"
                await asyncio.sleep(3 * DEADLINE)  # open past the deadline
                pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
                rest = [event async for event in events]
    pub.redis.close()
    assert [event.id for event in rest] == ["2"]


async def test_connections_past_the_cap_get_503_at_once(settings: Settings) -> None:
    pub = publisher(settings)
    job = "b" * 32
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    with running_server(settings, http=bounded(max_connections=CAP)) as server:
        held = [connect(server) for _ in range(CAP)]
        for sock in held:  # streams: each holds its connection
            sock.sendall(f"GET /api/v1/jobs/{job}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.settimeout(5)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        with connect(server) as extra:
            took, reply = closed_after(extra, 5)
        assert reply.startswith(b"HTTP/1.1 503 "), reply
        assert b"retry-after: 5" in reply.lower()
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == (
            "too_many_connections"
        )
        assert took < 1.0  # answered without waiting for a request
        held.pop().close()
        await eventually(lambda: len(server.server.server_state.connections) < CAP)
        with connect(server) as again:  # a freed slot is taken again
            again.sendall(head_of(200))
            assert answer(again).startswith(b"HTTP/1.1 200 ")
        for sock in held:
            sock.close()
    pub.redis.close()


def test_the_limits_come_from_the_settings() -> None:
    limits = ConnectionLimits.of(
        Settings(max_header_bytes=4096, request_timeout=2.5, max_connections=300)
    )
    assert (limits.max_head_bytes, limits.request_timeout, limits.max_connections) == (
        4096,
        2.5,
        300,
    )
    defaults = Settings.from_env({})
    assert (defaults.max_header_bytes, defaults.request_timeout) == (16384, 10.0)
    assert defaults.connection_cap == defaults.max_streams + 1000 == 11_000
