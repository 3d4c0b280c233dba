"""Forwarded headers are trusted only from configured proxies (issue 14, item 12).

Under the Procfile's web command, one local peer sending a different `X-Forwarded-For`
on each request must still count as one client against
`PROGRESS_MAX_STREAMS_PER_CLIENT`; with `PROGRESS_TRUSTED_PROXIES` naming the peer, each
forwarded address counts on its own, and an untrusted peer's header is still ignored.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from tests.support.reliability import RawStream, report, web_process
from tests.support.server import publisher

pytestmark = pytest.mark.slow

PER_CLIENT = 3
POSERS = 10  # streams from one peer, each claiming another address


def running_job(settings: Settings) -> str:
    job = uuid.uuid4().hex
    pub = publisher(settings)
    pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
    pub.redis.close()
    return job


async def statuses(port: int, path: str, forwarded: list[str]) -> list[int]:
    """Open one stream per forwarded address at once; their statuses, then close all."""
    streams = await asyncio.gather(
        *(RawStream.connect(port, path, headers={"X-Forwarded-For": a}) for a in forwarded)
    )
    try:
        return list(await asyncio.gather(*(s.read_head() for s in streams)))
    finally:
        for stream in streams:
            await stream.close()


async def test_one_peer_cannot_pose_as_many_clients_by_default(settings: Settings) -> None:
    job = running_job(settings)
    path = f"/api/v1/jobs/{job}/events"
    posing = [f"203.0.113.{i}" for i in range(1, POSERS + 1)]
    with web_process(settings, PROGRESS_MAX_STREAMS_PER_CLIENT=str(PER_CLIENT)) as web:
        got = await statuses(web.port, path, posing)
    report("forwarded/untrusted", per_client_cap=PER_CLIENT, served=got.count(200), sent=POSERS)
    assert got.count(200) == PER_CLIENT, got
    assert got.count(503) == POSERS - PER_CLIENT, got


async def test_a_configured_proxy_forwards_its_clients_addresses(settings: Settings) -> None:
    job = running_job(settings)
    path = f"/api/v1/jobs/{job}/events"
    posing = [f"203.0.113.{i}" for i in range(1, POSERS + 1)]
    env = {"PROGRESS_MAX_STREAMS_PER_CLIENT": str(PER_CLIENT)}
    with web_process(settings, PROGRESS_TRUSTED_PROXIES="127.0.0.1", **env) as web:
        distinct = await statuses(web.port, path, posing)
        same = await statuses(web.port, path, ["198.51.100.7"] * (PER_CLIENT + 1))
    with web_process(settings, PROGRESS_TRUSTED_PROXIES="192.0.2.0/24", **env) as web:
        elsewhere = await statuses(web.port, path, posing)
    report(
        "forwarded/trusted",
        distinct_served=distinct.count(200),
        same_address_served=same.count(200),
        untrusted_peer_served=elsewhere.count(200),
    )
    assert distinct == [200] * POSERS  # each forwarded client has its own cap
    assert sorted(same) == [200] * PER_CLIENT + [503]
    assert elsewhere.count(200) == PER_CLIENT  # the peer is not one of the proxies
