"""Frames written straight to the socket by the fan-out (`streaming/direct_writer.py`), and the
plain ASGI path the stream falls back to under other servers: same bytes, same order."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from uvicorn.importer import import_from_string
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.streaming import response
from tests.support.server import PROCFILE_HTTP, eventually, running_server


def started_job(pub: Publisher) -> str:
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    return job


async def past_the_preamble(lines: AsyncIterator[str]) -> None:
    """Read the `retry:` line and its comment: the stream is open and attached."""
    while await anext(lines) != "":
        pass


def test_the_procfile_serves_with_httptools_the_protocol_the_direct_path_needs() -> None:
    """The Procfile's `--http` is uvicorn's httptools protocol or a subclass of it (its
    request-response cycle is what direct writes need)."""
    protocol = import_from_string(PROCFILE_HTTP)
    assert issubclass(protocol, HttpToolsProtocol)


# The Procfile's protocol, uvicorn's own httptools protocol, and h11 (plain ASGI sends).
PROTOCOLS = [PROCFILE_HTTP, "httptools", "h11"]


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_a_stream_is_the_same_whether_frames_go_direct_or_through_asgi(
    settings: Settings, pub: Publisher, http: str
) -> None:
    job = started_job(pub)
    with running_server(settings, http=http) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with client.stream("GET", f"/api/v1/jobs/{job}/events") as response:
                lines = response.aiter_lines()
                await past_the_preamble(lines)
                subs = server.services.hub.subscribers()
                assert len(subs) == 1
                # Only httptools (the Procfile's protocol is built on it) writes straight
                # to the socket.
                assert (subs[0].sink is not None) == (http != "h11")
                for percent in range(1, 51):
                    pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=percent))
                pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result=1))
                rest = [line async for line in lines]
    ids = [int(line[4:]) for line in rest if line.startswith("id: ")]
    assert ids == list(range(1, 53))  # the snapshot, 50 progress events, the end
    data = [json.loads(line[6:]) for line in rest if line.startswith("data: ")]
    assert [d["percent"] for d in data[1:51]] == [float(p) for p in range(1, 51)]
    assert data[-1]["status"] == "success"


async def test_streams_without_direct_writes_say_so_once(
    settings: Settings,
    pub: Publisher,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fallback to plain ASGI sends is never silent: one warning per process."""
    monkeypatch.setattr(response, "_warned", False)
    job = started_job(pub)
    with running_server(settings, http="h11") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for _ in range(2):
                async with client.stream("GET", f"/api/v1/jobs/{job}/events") as stream:
                    await past_the_preamble(stream.aiter_lines())
    warnings = [r for r in caplog.records if "plain ASGI sends" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "h11" in warnings[0].getMessage()


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """An HTTP/1.1 chunked body's bytes, and whether its last chunk came."""
    body, rest = bytearray(), raw
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            return bytes(body), True
        body += rest[:size]
        rest = rest[size + 2 :]
    return bytes(body), False


async def test_a_client_that_stalls_then_reads_slowly_gets_every_event_in_order(
    settings: Settings, pub: Publisher
) -> None:
    """While the client reads nothing its socket fills and frames queue behind it; as it
    reads slowly, with events still coming, the socket pauses and resumes many times
    (each resume races the live frames against the queued ones); nothing may jump."""
    job = started_job(pub)
    events = 3000
    stalled = threading.Event()

    def publish() -> None:
        for index in range(events):
            if index == 700:
                stalled.wait(10)  # the backlog has formed: go on while the client reads
            pub.publish(EventDraft(job_id=job, status=JobStatus.PROGRESS, message="x" * 8000))
        pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))

    with running_server(settings.replace(client_queue=10_000)) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        thread = threading.Thread(target=publish)
        try:
            sock.sendall(f"GET /api/v1/jobs/{job}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await eventually(lambda: len(server.services.hub.subscribers()) == 1)
            [sub] = server.services.hub.subscribers()
            await eventually(lambda: sub.sink is not None)
            thread.start()
            await eventually(lambda: sub.queued > 0, within=10)  # frames wait in the queue
            stalled.set()
            sock.settimeout(10)
            received, done = bytearray(), False
            while not done:
                chunk = sock.recv(8192)  # small reads: the socket keeps filling up
                assert chunk, "the server closed the connection before the last chunk"
                received += chunk
                if chunk.endswith(b"0\r\n\r\n"):
                    head, _, body = bytes(received).partition(b"\r\n\r\n")
                    text, done = dechunk(body)
        finally:
            stalled.set()
            if thread.is_alive() or thread.ident is not None:
                thread.join()
            sock.close()
    assert head.startswith(b"HTTP/1.1 200")
    ids = [int(line[4:]) for line in text.split(b"\n") if line.startswith(b"id: ")]
    assert ids == list(range(1, events + 3))
    assert sub.coalesced == 0


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_a_client_that_leaves_frees_its_stream_on_either_path(
    settings: Settings, pub: Publisher, http: str
) -> None:
    """The Procfile's protocol tells the direct writer when the connection is lost;
    under uvicorn's own httptools protocol the sweep polls the writer's `gone`; under h11
    a listener task waits for `http.disconnect`."""
    job = started_job(pub)
    with running_server(settings.replace(ping_seconds=30), http=http) as server:
        services = server.services
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with client.stream("GET", f"/api/v1/jobs/{job}/events") as response:
                await past_the_preamble(response.aiter_lines())
                assert services.limiter.open == 1
                [sub] = services.hub.subscribers()
                await eventually(lambda: sub.sink is not None or http == "h11")
                assert sub.gone_told is (http == PROCFILE_HTTP)
        # No event and no ping is due: only the disconnect can end the stream, within a
        # sweep round (2 s here is generous; the first ping check is up to 7 s away).
        await eventually(lambda: services.limiter.open == 0, within=2)
        assert services.hub.subscribers() == []


async def test_a_finished_stream_leaves_nothing_on_its_kept_alive_connection(
    settings: Settings, pub: Publisher
) -> None:
    """The Procfile's protocol tells a stream when its client leaves; once the stream has
    ended, the kept-alive connection forgets it (it would otherwise hold the finished
    stream until the connection closes, and end it again then)."""
    job = started_job(pub)
    with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with client.stream("GET", f"/api/v1/jobs/{job}/events") as response:
                lines = response.aiter_lines()
                await past_the_preamble(lines)
                [protocol] = server.server.server_state.connections
                await eventually(lambda: protocol._when_lost is not None)
                pub.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS))
                async for _ in lines:
                    pass  # to the end of the response: the job finished
            await eventually(lambda: server.services.limiter.open == 0)
            assert (await client.get(f"/api/v1/jobs/{job}")).status_code == 200
            assert server.server.server_state.connections == {protocol}  # kept alive
            assert protocol._when_lost is None
