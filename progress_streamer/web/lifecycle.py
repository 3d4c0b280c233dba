"""The web app's lifecycle: its services (the hub, the keep-alive sweep, the WorkerLost
sweeper, the runners' settlers) started and stopped, wherever the app is served.

Served on its own, the app's lifespan runs them. Mounted in another app, it gets no
lifespan events of its own (ASGI sends them to the top-level app only), so the host must
enter `progress_app.lifespan`; until it does, every request is refused with a 500 that
names that line (and one log line), rather than failing later as `503 Redis is
unavailable` from a hub that never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from starlette.responses import Response

from progress_streamer.protocol.connections import acheck_server
from progress_streamer.protocol.sweeper import LeaseSweeper
from progress_streamer.web.errors import error_response
from progress_streamer.web.services import Services

log = logging.getLogger(__name__)

LIFESPAN_NOT_RUN = (
    "the progress app's lifespan did not run, so its services (Redis, the subscription "
    "hub, the sweeper) are not started. Mounted in another app, it needs the host's "
    "lifespan to start it: FastAPI(lifespan=progress_app.lifespan) or "
    "Starlette(lifespan=progress_app.lifespan), or enter "
    "`async with progress_app.lifespan(app):` inside your own lifespan (docs/fastapi.md)"
)
STOPPED = "the progress app is stopped (its lifespan ended)"


class Lifecycle:
    """Whether the app's services run, and what a request gets while they do not."""

    def __init__(self) -> None:
        self.serving = False
        self._ever_served = False
        self._logged = False

    @contextlib.asynccontextmanager
    async def running(self, services: Services) -> AsyncIterator[None]:
        if self.serving:  # entered again (a host's lifespan and the app's own): one run
            log.debug("the progress app's lifespan is already running")
            yield
            return
        async with run_services(services):
            self.serving = self._ever_served = True
            try:
                yield
            finally:
                self.serving = False

    def refusal(self) -> Response:
        """The answer to a request that arrived while the services do not run."""
        headers = {"Referrer-Policy": "no-referrer"}  # outside the middleware that adds it
        if self._ever_served:
            return error_response(503, "not_ready", STOPPED, {**headers, "Retry-After": "2"})
        if not self._logged:
            self._logged = True
            log.error("%s", LIFESPAN_NOT_RUN)
        return error_response(500, "internal", LIFESPAN_NOT_RUN, headers)


@contextlib.asynccontextmanager
async def run_services(services: Services) -> AsyncIterator[None]:
    try:
        await acheck_server(services.redis)  # a cluster's primaries are Redis >= 7.0
    except BaseException:
        await services.redis.aclose()
        raise
    await services.hub.start()
    services.keepalive.start()
    stop = asyncio.Event()
    sweepers = [start_sweeper(services, stop), *start_settlers(services, stop)]
    try:
        yield
    finally:
        services.keepalive.drain()
        stop.set()
        for sweeper in sweepers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sweeper, services.settings.shutdown_seconds + 1)
        await services.keepalive.stop()
        await services.hub.close()
        await services.redis.aclose()
        for runner in services.runners.values():
            await runner.aclose()  # what it opened on this loop
            await anyio.to_thread.run_sync(runner.close)


def start_sweeper(services: Services, stop: asyncio.Event) -> asyncio.Task[Any]:
    """The WorkerLost sweeper (protocol/sweeper.py): every web process runs one."""
    sweeper = LeaseSweeper(services.redis, services.settings)
    return asyncio.create_task(sweeper.run(stop), name="lease-sweeper")


def start_settlers(services: Services, stop: asyncio.Event) -> list[asyncio.Task[Any]]:
    """Each runner's settler (ARQ's ends jobs ARQ failed before running them; the default
    returns at once); every web process runs one per runner."""
    return [
        asyncio.create_task(runner.run_settler(stop), name=f"{name}-settler")
        for name, runner in services.runners.items()
    ]
