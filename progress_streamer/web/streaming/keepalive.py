"""One shared sweep over every open stream: pings, lifetimes and shutdown.

Instead of a timer per connection, a single task looks at all subscribers a few times a
second: a stream that sent nothing for half a ping interval gets `: ping` (so gaps stay
under `PROGRESS_PING_SECONDS`), a stream whose client left is ended (under the direct
writer, `streaming/direct_writer.py`), a stream past its (jittered) lifetime is ended, and when
uvicorn starts shutting down (SIGTERM) every stream is ended so clients resume elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

from progress_streamer.web.streaming.hub import SubscriptionHub


def uvicorn_is_exiting() -> bool:
    """True once uvicorn's signal handler has set `should_exit` (it owns SIGTERM).

    uvicorn only stops waiting for open connections after its graceful timeout, and runs
    the lifespan shutdown after that; streams must end before, so we look at its flag.
    """
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


class Keepalive:
    def __init__(
        self,
        hub: SubscriptionHub,
        ping_seconds: float,
        *,
        exiting: Callable[[], bool] = uvicorn_is_exiting,
    ) -> None:
        self.hub = hub
        self.half_ping = ping_seconds / 2
        self.tick = min(self.half_ping, 0.25)
        self.exiting = exiting
        self.draining = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-keepalive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def drain(self) -> None:
        """End every open stream now, and every stream that opens from now on."""
        self.draining = True
        for sub in self.hub.subscribers():
            sub.close("shutdown")

    async def _run(self) -> None:
        next_ping = time.monotonic() + self.half_ping
        while True:
            await asyncio.sleep(self.tick)
            if not self.draining and self.exiting():
                self.drain()
            now = time.monotonic()
            ping = now >= next_ping
            if ping:
                next_ping = now + self.half_ping
            for sub in self.hub.subscribers():
                if self.draining:
                    sub.close("shutdown")
                elif sub.sink is not None and sub.sink.gone:
                    sub.close("disconnect")
                elif now >= sub.deadline:
                    sub.close("lifetime")
                elif ping:
                    if not sub.wrote:
                        sub.request_ping()
                    sub.wrote = False
