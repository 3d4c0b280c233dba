"""Host apps for the mounting tests: a user's FastAPI or Starlette app with the progress app
mounted under a prefix, served by a real uvicorn in a thread.

`host_app(progress_app, mount)` builds the host the way a user would (`api.mount(path,
progress_app)`, nested mounts as Starlette `Mount`s) and reports the prefix every URL the
progress app returns must carry. `serving(app)` runs any ASGI app on 127.0.0.1:<free port>.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from progress_streamer.redis_server import free_port


def host_app(
    progress_app: ASGIApp,
    mount: str,
    *,
    framework: str = "fastapi",
    lifespan: Callable[[Any], Any] | None = None,
) -> Starlette:
    """The progress app mounted at `mount` ("/progress", "/progress/", or nested
    "/outer/progress": an inner Starlette app at /outer mounting it at /progress)."""
    outer, _, inner = mount.strip("/").rpartition("/")
    target: ASGIApp = progress_app
    if outer:  # nested: the last segment is mounted inside an app mounted at the rest
        target = Starlette(routes=[Mount(f"/{inner}", app=progress_app)])
    path = f"/{outer}" if outer else mount
    host: Starlette
    if framework == "fastapi":
        host = FastAPI(lifespan=lifespan)
    else:
        host = Starlette(lifespan=lifespan)
    host.mount(path, target)
    return host


class Served:
    """uvicorn serving an app in a thread with its own event loop."""

    def __init__(self, app: ASGIApp, *, http: str = "httptools") -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            http=http,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

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

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextmanager
def serving(app: ASGIApp, *, http: str = "httptools") -> Iterator[Served]:
    served = Served(app, http=http)
    served.start()
    try:
        yield served
    finally:
        served.stop()
