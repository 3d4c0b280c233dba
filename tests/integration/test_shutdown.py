"""SIGTERM with open streams: the production command exits within the bound."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid

import httpx

from app.procfile import command_of
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import free_port
from tests.support.server import open_sse, publisher


def start_web(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    """The Procfile's web command (production factory, uvloop, its protocol)."""
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "PROGRESS_KEY_PREFIX": settings.key_prefix,
        "PROGRESS_AUTH": "none",
        "PROGRESS_SHUTDOWN_SECONDS": "3",
    }
    command = command_of(
        "web", env, "--host", "127.0.0.1", "--port", str(port),
        "--timeout-graceful-shutdown", "3", "--log-level", "warning",
    )  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def test_sigterm_ends_open_streams_and_exits_in_time(settings: Settings) -> None:
    port = free_port()
    process = start_web(settings, port)
    pub = publisher(settings)
    job = uuid.uuid4().hex
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(500):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.02)
            url = f"/api/v1/jobs/{job}/events"
            async with (
                open_sse(client, url) as (first, a),
                open_sse(client, url) as (second, b),
            ):
                await anext(a)
                await anext(b)
                sent = time.monotonic()
                process.send_signal(signal.SIGTERM)
                assert [e async for e in a] == [] and [e async for e in b] == []
                assert first.ended and second.ended
                assert first.raw.endswith(b"\n\n") and second.raw.endswith(b"\n\n")
        exit_code = await asyncio.to_thread(process.wait, 10)
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output = process.stdout.read().decode() if process.stdout else ""
        if process.stdout:
            process.stdout.close()
        pub.redis.close()
    # uvicorn re-raises the signal it captured once it has shut down cleanly.
    assert exit_code in (0, -signal.SIGTERM), output
    assert "Traceback" not in output and "Cancel" not in output, output
    assert elapsed < 3, (elapsed, output)
