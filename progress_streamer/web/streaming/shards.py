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

from redis.asyncio.cluster import ClusterNode, RedisCluster
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
PASSING_ERRORS = (
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
    """The owner of each channel's slot, from the cluster client's slot map."""

    def __init__(self, cluster: RedisCluster, *, client_name: str) -> None:
        self._nodes = cluster.nodes_manager
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
