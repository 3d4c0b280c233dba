"""The suite's own guard (tests/conftest.py): an unretrieved task exception is caught."""

from __future__ import annotations

import asyncio
import gc

import pytest
import redis
import redis.cluster

from progress_streamer.protocol.settings import Settings
from tests.conftest import UNRETRIEVED, unretrieved


async def test_an_unretrieved_task_exception_is_reported_to_the_guard() -> None:
    async def dies() -> None:
        raise RuntimeError("nobody awaits me")

    before = len(unretrieved.reports)
    task = asyncio.create_task(dies())
    await asyncio.sleep(0)  # it runs and fails; nobody retrieves the exception
    await asyncio.sleep(0)
    del task
    gc.collect()
    found = unretrieved.reports[before:]
    assert len(found) == 1 and UNRETRIEVED in found[0] and "nobody awaits me" in found[0]
    del unretrieved.reports[before:]  # seen: this test passes (the guard would fail it)


@pytest.mark.both_redis_modes
def test_both_redis_modes_gives_each_mode_its_settings_and_client(
    redis_mode: str, settings: Settings, sync_redis: redis.Redis, request: pytest.FixtureRequest
) -> None:
    assert request.node.callspec.params["redis_mode"] == redis_mode
    assert settings.cluster is (redis_mode == "cluster")
    assert isinstance(sync_redis, redis.cluster.RedisCluster) is settings.cluster
    assert sync_redis.set(f"{settings.key_prefix}:{{x}}:probe", "1")
    if settings.cluster:  # the broker and the ARQ queue stay on the plain Redis
        assert settings.celery_broker_url == settings.arq_redis_url
        assert settings.arq_url.startswith("redis://")


def test_a_test_without_the_marker_runs_once_on_one_redis(redis_mode: str) -> None:
    assert redis_mode == "standalone"
