"""Real-server test helpers: uvicorn on a free port, a WHATWG-style SSE client, a fake runner.

httpx's in-process ASGI transport buffers whole responses, so streams are tested against
a real uvicorn (in a thread, with its own event loop) over a real socket.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
import redis.cluster
import uvicorn

from app.procfile import option_of
from progress_streamer.protocol.connections import sync_client
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import Publisher, PublishOutcome
from progress_streamer.protocol.runner import JobRunner
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import free_port
from progress_streamer.web import create_app
from progress_streamer.web.catalog import Catalog
from progress_streamer.web.services import Services


class FakeRunner(JobRunner):
    """A runner that publishes like a real one, without any task queue."""

    def __init__(self, settings: Settings) -> None:
        self.client = sync_client(settings, max_connections=16)
        self.publisher = Publisher(self.client, settings)
        self.enqueued: list[tuple[str, str, dict[str, Any]]] = []

    def enqueue(self, job_id: str, task: str, params: dict[str, Any]) -> None:
        self.enqueued.append((job_id, task, params))
        self.publisher.publish(EventDraft(job_id=job_id, status=JobStatus.PENDING))

    def cancel(self, job_id: str) -> PublishOutcome:
        return self.publisher.publish(EventDraft(job_id=job_id, status=JobStatus.REVOKED))

    def close(self) -> None:
        self.client.close()


# The Procfile's HTTP protocol (an import string uvicorn.Config resolves): servers in
# tests run under it unless a test names another.
PROCFILE_HTTP = option_of("web", "--http")


class ServerThread:
    """uvicorn serving `create_app(settings)` in a thread, on 127.0.0.1:<free port>."""

    def __init__(
        self,
        settings: Settings,
        runners: Mapping[str, JobRunner] | None = None,
        *,
        http: str | type[asyncio.Protocol] = PROCFILE_HTTP,  # "h11": plain ASGI sends
        catalog: Catalog | None = None,
    ):
        self.app = create_app(settings, runners=runners, catalog=catalog)
        self.services: Services = self.app.state.services
        self.port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            http=http,
            log_level="warning",
            timeout_graceful_shutdown=5,
            proxy_headers=False,  # as the Procfile: PROGRESS_TRUSTED_PROXIES decides
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def call(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` on the server's event loop (thread-safe)."""
        loop = self.services.hub._task.get_loop() if self.services.hub._task else None
        assert loop is not None
        loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.call(self.services.keepalive.drain)
            self.server.should_exit = True
            self.thread.join(timeout=15)


@contextmanager
def running_server(
    settings: Settings,
    runners: Mapping[str, JobRunner] | None = None,
    *,
    http: str | type[asyncio.Protocol] = PROCFILE_HTTP,
    catalog: Catalog | None = None,
) -> Iterator[ServerThread]:
    server = ServerThread(settings, runners, http=http, catalog=catalog)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class SSEEvent:
    data: str
    id: str | None
    event: str = "message"


@dataclass
class SSEStream:
    """What one response carried: dispatched events, comments, retry, the raw bytes."""

    response: httpx.Response
    events: list[SSEEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    raw: bytearray = field(default_factory=bytearray)
    last_event_id: str | None = None
    ended: bool = False


class SSEParser:
    """The WHATWG event-stream parser: CR/LF/CRLF, dispatch on a blank line only."""

    def __init__(self, stream: SSEStream) -> None:
        self.stream = stream
        self.buffer = ""
        self.data: list[str] = []
        self.event_type = ""
        self.id = stream.last_event_id

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self.stream.raw += chunk
        self.buffer += chunk.decode("utf-8")
        out: list[SSEEvent] = []
        while True:
            idx = min((i for i in (self.buffer.find("\r"), self.buffer.find("\n")) if i >= 0),
                      default=-1)  # fmt: skip
            if idx < 0:
                return out
            if self.buffer[idx] == "\r" and idx + 1 == len(self.buffer):
                return out  # a CR at the end may be half of a CRLF
            line = self.buffer[:idx]
            step = 2 if self.buffer[idx : idx + 2] == "\r\n" else 1
            self.buffer = self.buffer[idx + step :]
            event = self._line(line)
            if event is not None:
                out.append(event)

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.stream.comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event_type = value
        elif name == "id" and "\0" not in value:
            self.id = value
        elif name == "retry" and value.isdigit():
            self.stream.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        self.stream.last_event_id = self.id
        data, self.data = self.data, []
        event_type, self.event_type = self.event_type or "message", ""
        if not data:
            return None
        event = SSEEvent(data="\n".join(data), id=self.id, event=event_type)
        self.stream.events.append(event)
        return event


@asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[SSEStream, AsyncIterator[SSEEvent]]]:
    """Open a stream; yields (record, async iterator of events). Closes the response."""
    hdrs = dict(headers or {})
    if last_event_id is not None:
        hdrs["Last-Event-ID"] = last_event_id
    async with client.stream("GET", url, headers=hdrs) as response:
        stream = SSEStream(response=response, last_event_id=last_event_id)
        parser = SSEParser(stream)

        async def events() -> AsyncIterator[SSEEvent]:
            async for chunk in response.aiter_raw():
                for event in parser.feed(chunk):
                    yield event
            stream.ended = True

        yield stream, events()


async def read_all(client: httpx.AsyncClient, url: str, **kwargs: Any) -> SSEStream:
    """Read a stream to its end (use only where the server ends it)."""
    async with open_sse(client, url, **kwargs) as (stream, events):
        if stream.response.status_code == 200:
            async for _ in events:
                pass
        return stream


def read_events(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    """A stream's events (their JSON), read to its end with a blocking client."""
    with client.stream("GET", url) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        parser = SSEParser(SSEStream(response=response))
        for chunk in response.iter_raw():
            parser.feed(chunk)
    return [json.loads(e.data) for e in parser.stream.events]


def publisher(settings: Settings) -> Publisher:
    """A publisher of the settings' Redis (one server or a cluster); close its `redis`."""
    return Publisher(sync_client(settings, max_connections=16), settings)


def numsub(client: redis.Redis, keyspace: KeySpace, job_id: str) -> int:
    """Subscribers of the job's channel: its sharded ones on the owning primary when
    `client` is a cluster client (the hub SSUBSCRIBEs there)."""
    channel = keyspace.job(job_id).channel
    if isinstance(client, redis.cluster.RedisCluster):
        owner = client.get_node_from_key(channel)
        reply = client.execute_command("PUBSUB", "SHARDNUMSUB", channel, target_nodes=owner)
        return int(reply[1])
    reply = client.pubsub_numsub(channel)
    return int(reply[0][1])  # type: ignore[index]


def hub_connections(client: redis.Redis, prefix: str) -> int:
    clients = client.client_list(_type="pubsub")
    return sum(1 for c in clients if c.get("name") == f"progress-hub-{prefix}")


async def eventually(check: Any, within: float = 5.0) -> None:
    """Await until `check()` is true (polling Redis state, which has no push)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
