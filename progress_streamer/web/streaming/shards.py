"""Cluster routing for the hub: which primary owns a job channel, and a bare pub/sub
connection to it.

In Redis Cluster a job's channel is sharded (`SPUBLISH`/`SSUBSCRIBE`): only the primary
owning the slot of its hash tag (`{<job_id>}`, protocol/keys.py) delivers it, so the hub
holds one connection per primary and subscribes each channel on its slot's owner.

The slot map is the cluster client's own (redis-py's asyncio `RedisCluster` and its
`NodesManager`), not a second copy: a refresh here also serves the commands of that
client, and the connections inherit its address, credentials and TLS settings.
"""

from __future__ import annotations

from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

CONNECT_TIMEOUT = 2.0

# What a command raises while a primary restarts or fails over: worth another try soon.
# redis-py 5.3's cluster client also raises AttributeError when it refreshes its map
# under a command in flight (the connection closed beneath it: redis/redis-py#3835 and
# kin), and under uvloop a RuntimeError ("unable to perform operation on TCPTransport
# closed") when it connects on a socket that closed beneath it; nothing else raises
# either in a history read.
PASSING_ERRORS = (
    AttributeError,
    RuntimeError,
    ConnectionError,
    TimeoutError,
    ClusterDownError,
    TryAgainError,
    MasterDownError,
    RedisClusterException,
    OSError,
)


def slot_of(channel: str) -> int:
    """The cluster slot of a channel (CRC16 of its hash tag, mod 16384)."""
    return int(key_slot(channel.encode()))


class ShardMap:
    """The owner of each channel's slot, from a slot map of the hub's own.

    Built from the cluster client's seeds and connection settings (so the links inherit
    its credentials and TLS), but a separate map: redis-py replaces a map's node objects,
    and closes their connections, on every refresh, which would break the commands the
    web app's client has in flight. This map's only connection is the one its refresh
    reads `CLUSTER SLOTS` on."""

    def __init__(self, cluster: RedisCluster, *, client_name: str) -> None:
        source = cluster.nodes_manager
        kwargs = dict(source.connection_kwargs)
        seeds = [ClusterNode(n.host, n.port, **kwargs) for n in source.startup_nodes.values()]
        self._nodes = NodesManager(seeds, False, kwargs)
        self._client_name = client_name

    def owner(self, channel: str) -> ClusterNode | None:
        """The primary serving the channel's slot; None until the map is known or while
        the slot is not covered (the cluster is down or being reconfigured)."""
        try:
            return self._nodes.get_node_from_slot(slot_of(channel))
        except (SlotNotCoveredError, KeyError):
            return None

    async def refresh(self) -> None:
        """Read the slot map again (`CLUSTER SLOTS` from the first reachable node)."""
        await self._nodes.initialize()

    async def close(self) -> None:
        await self._nodes.aclose("startup_nodes")
        await self._nodes.aclose()

    def primaries(self) -> set[str]:
        """The names (`host:port`) of the primaries the map knows."""
        return {node.name for node in self._nodes.get_nodes_by_server_type("primary")}

    def connection_to(self, node: ClusterNode) -> Connection:
        """A bare connection to the node, as the cluster client makes them, but named,
        bounded when connecting, and without a socket timeout (the hub's reader keeps one
        timer for all its reads: hub.py)."""
        kwargs = dict(node.connection_kwargs)
        kwargs.update(
            client_name=self._client_name,
            socket_timeout=None,
            socket_connect_timeout=CONNECT_TIMEOUT,
        )
        return node.connection_class(**kwargs)
