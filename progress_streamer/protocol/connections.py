"""Every Redis client of the product is built here: of the progress Redis (one server, or
a Redis Cluster when `REDIS_URL=redis+cluster://...`), sync and asyncio, and of the ARQ
queue's Redis (never a cluster), always with explicit pool bounds.

Used by the web app, the hub's command client, the Celery and ARQ runtimes and runners.
A caller states how many connections it may hold (`max_connections`: per node on a
cluster) and how long a command may take; nothing relies on redis-py's unbounded pool
defaults. On a cluster, `check_server`/`acheck_server` refuse primaries older than Redis
7.0 (no sharded pub/sub) at start.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.commands.core import AsyncScript, Script

from progress_streamer.protocol.settings import Settings, SettingsError, cluster_seeds

SyncRedis: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"
AsyncRedis: TypeAlias = "redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster"

MIN_CLUSTER_VERSION = (7, 0)
CONNECT_TIMEOUT = 2.0  # seconds to open a connection: a dead node fails fast


def script(client: SyncRedis, source: str) -> Script:
    """A registered Lua script (EVALSHA, reloaded when a node lost its script cache)."""
    # redis-py types `register_script` for `Redis` only; `RedisCluster` has it too.
    return client.register_script(source)  # type: ignore[misc]


def ascript(client: AsyncRedis, source: str) -> AsyncScript:
    """`script` for an asyncio client."""
    return client.register_script(source)  # type: ignore[misc]


def _nodes(url: str) -> list[redis.cluster.ClusterNode]:
    return [redis.cluster.ClusterNode(h, p) for h, p in cluster_seeds(url)]  # type: ignore[no-untyped-call]


def cluster_options(url: str) -> dict[str, Any]:
    """Credentials and TLS of a `redis+cluster://` / `rediss+cluster://` URL."""
    options: dict[str, Any] = {"ssl": url.startswith("rediss+")}
    userinfo = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
    if userinfo:  # user:password, :password, or a password alone (URL-encoded)
        user, sep, password = (unquote(part) for part in userinfo.partition(":"))
        options["username"] = (user or None) if sep else None
        options["password"] = password if sep else user
    return options


def sync_client(
    settings: Settings, *, max_connections: int, socket_timeout: float = 10.0
) -> SyncRedis:
    """A client of the progress Redis for sync code (Celery tasks, signals, runners).

    On one server a caller beyond the bound waits up to `socket_timeout` for a free
    connection (`BlockingConnectionPool`). On a cluster the bound is per node and a
    caller beyond it gets an error at once (redis-py 5.3's cluster pools do not block);
    the cluster's version is checked here, as the client is built."""
    if not settings.cluster:
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=max_connections,
            timeout=socket_timeout,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=socket_timeout,
            health_check_interval=30,
        )
        return redis.Redis(connection_pool=pool)
    cluster: redis.cluster.RedisCluster = redis.cluster.RedisCluster(
        startup_nodes=_nodes(settings.redis_url),
        max_connections=max_connections,
        require_full_coverage=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        **cluster_options(settings.redis_url),
    )
    try:
        check_server(cluster)
    except BaseException:
        cluster.close()
        raise
    return cluster


def async_client(
    settings: Settings, *, max_connections: int, socket_timeout: float = 10.0
) -> AsyncRedis:
    """A client of the progress Redis for asyncio code (the web app, ARQ jobs), bounded as
    `sync_client`'s. Call `acheck_server` once at start."""
    if not settings.cluster:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=max_connections,
            timeout=socket_timeout,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=socket_timeout,
            health_check_interval=30,
        )
        return redis.asyncio.Redis.from_pool(pool)
    seeds = cluster_seeds(settings.redis_url)
    cluster: redis.asyncio.cluster.RedisCluster = redis.asyncio.cluster.RedisCluster(
        startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in seeds],
        max_connections=max_connections,
        require_full_coverage=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        **cluster_options(settings.redis_url),
    )
    cluster.nodes_manager.__class__ = StableNodes  # same slots, steadier refreshes
    return cluster


class StableNodes(redis.asyncio.cluster.NodesManager):
    """redis-py 5.3's slot map, except that a refresh keeps the node objects (and their
    pooled connections) of the nodes still in the cluster.

    redis-py builds new node objects on every refresh (the hub refreshes whenever a
    channel moves) and closes the old ones in tasks nobody awaits: each refresh empties
    every pool, and a command that picked a node just before it opens a connection on an
    orphan that nothing ever closes (the tests see it as an unclosed transport)."""

    __slots__ = ()

    def set_nodes(
        self,
        old: dict[str, redis.asyncio.cluster.ClusterNode],
        new: dict[str, redis.asyncio.cluster.ClusterNode],
        remove_old: bool = False,
    ) -> None:
        if old is self.nodes_cache and old:
            for name, node in list(new.items()):
                kept = old.get(name)
                if kept is not None and kept is not node:
                    kept.server_type = node.server_type
                    new[name] = kept
            # `initialize` has just pointed the slots at the new objects: use the kept ones.
            remapped: dict[tuple[str, ...], list[redis.asyncio.cluster.ClusterNode]] = {}
            for slot, nodes in self.slots_cache.items():
                names = tuple(n.name for n in nodes)
                if (same := remapped.get(names)) is None:
                    same = remapped[names] = [new.get(n.name, n) for n in nodes]
                self.slots_cache[slot] = same
        super().set_nodes(old, new, remove_old)


def queue_pool(
    url: str, *, max_connections: int, timeout: float
) -> redis.asyncio.BlockingConnectionPool:
    """A bounded pool of the ARQ queue's Redis (`ARQ_REDIS_URL`, never a cluster): a caller
    beyond the bound waits up to `timeout` for a free connection."""
    return redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=timeout,
    )


def too_old(versions: dict[str, str]) -> str | None:
    """The complaint about the nodes (address -> redis_version) older than 7.0, or None."""
    old = {
        node: version
        for node, version in versions.items()
        if tuple(int(p) for p in version.split(".")[:2]) < MIN_CLUSTER_VERSION
    }
    if not old:
        return None
    listed = ", ".join(f"{node} runs {version}" for node, version in sorted(old.items()))
    return (
        f"REDIS_URL names a Redis Cluster whose primaries must run Redis >= 7.0 (sharded "
        f"pub/sub, SPUBLISH/SSUBSCRIBE): {listed}"
    )


def check_server(client: SyncRedis) -> None:
    """Refuse a cluster with a primary older than Redis 7.0 (`SettingsError`)."""
    if isinstance(client, redis.cluster.RedisCluster):
        versions = {
            node.name: str(client.info("server", target_nodes=node)["redis_version"])
            for node in client.get_primaries()
        }
        if (complaint := too_old(versions)) is not None:
            raise SettingsError(complaint)


async def acheck_server(client: AsyncRedis) -> None:
    """`check_server` for an asyncio client."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        await client.initialize()  # the slot map, and so the primaries
        versions = {}
        for node in client.get_primaries():
            info = await client.info("server", target_nodes=node)
            versions[node.name] = str(info["redis_version"])
        if (complaint := too_old(versions)) is not None:
            raise SettingsError(complaint)
