"""Shared fixtures: one private redis-server for the session, a key prefix per test; and
a guard that fails any test during which asyncio reported a task exception nobody
retrieved (a background task that died silently, in the test's loop or a server thread's).
"""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from progress_streamer.protocol.connections import async_client, sync_client
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.redis_server import RedisServer
from tests.support.redis_cluster import RedisCluster, cluster_unavailable
from tests.support.server import publisher

UNRETRIEVED = "exception was never retrieved"


class UnretrievedExceptions(logging.Handler):
    """Keeps asyncio's reports of a task or future whose exception nobody retrieved.

    asyncio logs them on its `asyncio` logger from whichever loop (or thread) dropped the
    task, so one handler there sees the tests' loops and the uvicorn threads' alike.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if UNRETRIEVED in message:
            self.reports.append(message.splitlines()[0] + ": " + message[:2000])


unretrieved = UnretrievedExceptions()
logging.getLogger("asyncio").addHandler(unretrieved)


@pytest.fixture(autouse=True)
def no_unretrieved_task_exceptions() -> Iterator[None]:
    """Fail the test if asyncio reported an exception nobody retrieved while it ran."""
    before = len(unretrieved.reports)
    yield
    found = unretrieved.reports[before:]
    if found:
        pytest.fail("asyncio reported " + "; ".join(found), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A task dropped in a reference cycle is only reported when collected: collect once
    at the end (a collection per test would cost ~60 ms each) and fail the run if any."""
    reported = len(unretrieved.reports)
    gc.collect()
    late = unretrieved.reports[reported:]
    if late:
        print("\nasyncio reported task exceptions nobody retrieved:\n" + "\n".join(late))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-primary Redis Cluster of PATH's redis-server >= 7 for the session (tests that
    kill, restart or migrate start their own `RedisCluster`). Skips, saying why, when
    that binary is missing or too old."""
    why = cluster_unavailable()
    if why is not None:
        pytest.skip(f"Redis Cluster tests need redis-server >= 7 on PATH: {why}")
    with RedisCluster(primaries=3) as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `both_redis_modes` runs twice: on one Redis, and on a Redis Cluster
    (`redis_mode` = 'cluster': `settings`, `sync_redis` and `async_redis` follow)."""
    if metafunc.definition.get_closest_marker("both_redis_modes") is not None:
        if "redis_mode" in metafunc.fixturenames:
            metafunc.parametrize(
                "redis_mode",
                ["standalone", pytest.param("cluster", marks=pytest.mark.cluster)],
                indirect=True,
            )


@pytest.fixture
def redis_mode(request: pytest.FixtureRequest) -> str:
    """'standalone' (the session's redis-server), or 'cluster' for `both_redis_modes`."""
    return str(getattr(request, "param", "standalone"))


@pytest.fixture
def settings(
    redis_server: RedisServer, prefix: str, redis_mode: str, request: pytest.FixtureRequest
) -> Settings:
    base = Settings(
        redis_url=redis_server.url,
        key_prefix=prefix,
        auth="none",
        throttle_ms=50,
    )
    if redis_mode != "cluster":
        return base
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    # Celery's broker and ARQ's queue cannot live on a cluster: the session's Redis.
    return base.replace(
        redis_url=cluster.url,
        celery_broker_url=redis_server.url,
        arq_redis_url=redis_server.url,
    )


@pytest.fixture
def pub(settings: Settings) -> Iterator[Publisher]:
    """A publisher on the test's Redis (and key prefix), as a worker would publish."""
    p = publisher(settings)
    yield p
    p.redis.close()


@pytest.fixture
def keyspace(prefix: str) -> KeySpace:
    return KeySpace(prefix)


@pytest.fixture
def sync_redis(
    redis_server: RedisServer, redis_mode: str, request: pytest.FixtureRequest
) -> Iterator[redis.Redis]:
    if redis_mode == "cluster":
        cluster_client = sync_client(request.getfixturevalue("settings"), max_connections=16)
        yield cluster_client  # type: ignore[misc]
        cluster_client.close()
        return
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
async def async_redis(
    redis_server: RedisServer, redis_mode: str, request: pytest.FixtureRequest
) -> AsyncIterator[redis.asyncio.Redis]:
    if redis_mode == "cluster":
        cluster_client = async_client(request.getfixturevalue("settings"), max_connections=16)
        yield cluster_client  # type: ignore[misc]
        await cluster_client.aclose()
        return
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()
