"""The cluster fixture itself (tests/support/redis_cluster.py): formed, healthy, and its
fault tools do what they say, so the cluster tests can trust it."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import ClusterNode as Seed
from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

from tests.support.redis_cluster import RedisCluster, cluster_unavailable

pytestmark = pytest.mark.cluster


def client_of(cluster: RedisCluster) -> ClusterClient:
    return ClusterClient(startup_nodes=[Seed("127.0.0.1", p) for p in cluster.ports])


def test_the_session_cluster_has_three_primaries_owning_every_slot(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    assert len(redis_cluster.primaries()) == 3
    assert all(pid is not None for pid in redis_cluster.pids)
    for node in redis_cluster.nodes:
        assert "cluster_state:ok" in str(node.command("CLUSTER", "INFO"))
        with node.client() as plain:
            assert int(plain.info("server")["redis_version"].split(".")[0]) >= 7
    client = client_of(redis_cluster)
    try:
        keys = [f"{prefix}:{{job{i}}}:state" for i in range(30)]
        for key in keys:
            client.set(key, "1")
        owners = {redis_cluster.owner_of_key(k).port for k in keys}
        assert len(owners) == 3  # 30 random-ish tags land on every primary
        assert all(client.get(k) == b"1" for k in keys)
    finally:
        client.close()


@pytest.mark.slow
def test_a_migrated_slot_keeps_its_keys_and_a_restarted_node_its_data(prefix: str) -> None:
    if (why := cluster_unavailable()) is not None:
        pytest.skip(why)
    with RedisCluster(primaries=3) as cluster:
        key = f"{prefix}:{{job}}:state"
        slot = key_slot(key.encode())
        client = client_of(cluster)
        try:
            client.set(key, "kept")
            source = cluster.owner_of(slot)
            target = next(n for n in cluster.primaries() if n is not source)
            cluster.migrate_slot(slot, target)
            assert cluster.owner_of(slot) is target
            assert target.command("GET", key) == "kept"
            with pytest.raises(redis.ResponseError, match="MOVED"):
                source.command("GET", key)
            pid = target.pid
            cluster.kill(target)
            cluster.restart(target)
            assert target.pid != pid
            assert cluster.owner_of(slot) is target
            assert client.get(key) == b"kept"  # the AOF kept it; the client re-routed
        finally:
            client.close()


@pytest.mark.slow
def test_a_replica_takes_over_its_primary(prefix: str) -> None:
    if (why := cluster_unavailable()) is not None:
        pytest.skip(why)
    with RedisCluster(primaries=3, replicas=1) as cluster:
        assert len(cluster.primaries()) == 3
        primary = cluster.primaries()[0]
        (replica,) = cluster.replicas_of(primary)
        cluster.failover(replica)
        assert replica in cluster.primaries() and primary not in cluster.primaries()
