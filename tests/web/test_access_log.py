"""The access log carries no query-string value, however the query is spelled."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from progress_streamer.protocol.settings import Settings
from progress_streamer.web import access_log
from tests.support.server import FakeRunner, ServerThread

TOKEN = "eyJzZWNyZXQiOiJ0b2tlbiJ9.Zx1f2A.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"

# Spellings an outside review sent (issue 14, item 11), with the usual ones: each carries
# the token in the query, whether or not the server would read it as `token`.
QUERIES = [
    f"token={TOKEN}",
    f"%74oken={TOKEN}",
    f"a=1;token={TOKEN}",
    f"token%00={TOKEN}",
    f"token[]={TOKEN}",
    f'"token={TOKEN}',
    f"token%3D{TOKEN}",
    f"x=1&&token={TOKEN}#frag",
    TOKEN,
]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def access_lines() -> Iterator[list[str]]:
    """uvicorn.access records, as formatted for a handler (added after uvicorn's Config,
    which resets that logger's handlers)."""
    logger = logging.getLogger("uvicorn.access")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("query", QUERIES)
def test_an_access_record_keeps_the_path_and_no_query_value(query: str) -> None:
    name = f"test.access.{uuid.uuid4().hex}"
    access_log.install(name)
    handler = Collect()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # uvicorn's own call (protocols/http/httptools_impl.py).
    path = f"/api/v1/jobs/abc?{query}"
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
    logger.info(f'127.0.0.1:5000 - "GET {path} HTTP/1.1" 200')  # a preformatted line
    assert len(handler.lines) == 2
    for line in handler.lines:
        assert TOKEN not in line and "token" not in line.lower(), line
        assert "GET /api/v1/jobs/abc?" in line


def test_the_server_logs_no_query_value_whatever_its_spelling(settings: Settings) -> None:
    """Raw request lines, so that no client library re-encodes the spelling."""
    runner = FakeRunner(settings)
    server = ServerThread(settings, {"celery": runner})
    server.server.config.access_log = True
    with access_lines() as lines:
        server.start()
        try:
            for query in QUERIES:
                for path in ("/api/v1/jobs/abc", "/healthz"):
                    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                        request = f"GET {path}?{query} HTTP/1.1\r\nHost: x\r\n\r\n"
                        sock.sendall(request.encode())
                        assert sock.recv(4096).startswith(b"HTTP/1.1 ")
        finally:
            server.stop()
            runner.close()
    assert len(lines) == 2 * len(QUERIES), lines
    leaked = [line for line in lines if TOKEN in line]
    assert not leaked, leaked
    assert all(" /api/v1/jobs/abc?" in line or " /healthz?" in line for line in lines)
