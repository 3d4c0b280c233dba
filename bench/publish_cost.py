"""Redis CPU per publish-script call, one Redis against a Redis Cluster, and the share of
the calls each primary takes.

    .venv/bin/python -m bench.publish_cost [--rounds N] [--jobs N] [--events N]

Each round publishes `jobs` x `events` events (a `started`, then `progress`) through a
`Publisher` into: the embedded Redis 6.2 (PUBLISH, no token: the standalone path), the
system redis-server >= 7 alone with AOF (PUBLISH), and a 3-primary cluster of it with AOF
(SPUBLISH and the idempotency token), and reads `INFO commandstats` (EVALSHA's
`usec_per_call`: the script's time inside Redis, its commands included). Rounds
interleave the three so they see the same machine noise; medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from typing import Any

import redis

from progress_streamer.protocol.connections import sync_client
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer, find_redis_server
from tests.support.redis_cluster import RedisCluster, system_redis_server


def publish_round(publisher: Publisher, jobs: int, events: int) -> None:
    for _ in range(jobs):
        job = uuid.uuid4().hex
        publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
        for i in range(1, events):
            draft = EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=float(i % 100))
            publisher.publish(draft)


def evalsha(client: redis.Redis) -> tuple[int, float]:
    stats: dict[str, Any] = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), float(stats.get("usec", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--events", type=int, default=100)
    args = parser.parse_args()
    system, version = system_redis_server()
    if system is None:
        raise SystemExit(version)
    with (
        RedisServer(find_redis_server()) as embedded,
        RedisServer(system, appendonly=True) as single,
        RedisCluster(3) as cluster,
    ):
        plain = {
            "embedded Redis, PUBLISH": embedded,
            f"Redis {version} + AOF, PUBLISH": single,
        }
        publishers = {
            name: Publisher(sync_client(Settings(redis_url=s.url), max_connections=2),
                            Settings(redis_url=s.url))
            for name, s in plain.items()
        }  # fmt: skip
        on_cluster = Settings(
            redis_url=cluster.url, celery_broker_url=single.url, arq_redis_url=single.url
        )
        clustered = Publisher(sync_client(on_cluster, max_connections=2), on_cluster)
        cluster_name = f"3-primary cluster, Redis {version} + AOF, SPUBLISH + token"
        figures: dict[str, list[float]] = {name: [] for name in [*plain, cluster_name]}
        shares: list[list[int]] = []
        nodes = [n.client() for n in cluster.nodes]
        for _ in range(args.rounds):
            for name, publisher in publishers.items():
                publisher.redis.config_resetstat()
                publish_round(publisher, args.jobs, args.events)
                calls, usec = evalsha(publisher.redis)  # type: ignore[arg-type]
                figures[name].append(usec / calls)
            for node in nodes:
                node.config_resetstat()
            publish_round(clustered, args.jobs, args.events)
            per_node = [evalsha(node) for node in nodes]
            calls = sum(c for c, _ in per_node)
            figures[cluster_name].append(sum(u for _, u in per_node) / calls)
            shares.append([c for c, _ in per_node])
        for node in nodes:
            node.close()
    calls_per_round = args.jobs * args.events
    print(f"{args.rounds} interleaved rounds of {calls_per_round} publishes each\n")
    print("| Redis | EVALSHA µs per call (median) | min | max |")
    print("| --- | --- | --- | --- |")
    for name, values in figures.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | "
              f"{max(values):.1f} |")  # fmt: skip
    totals = [sum(column) for column in zip(*shares, strict=True)]
    print(f"\ncalls per cluster node over all rounds: {totals} (random job ids)")


if __name__ == "__main__":
    main()
