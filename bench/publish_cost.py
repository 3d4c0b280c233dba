"""Redis CPU per publish-script call, one Redis against a Redis Cluster, and the share of
the calls each primary takes.

    .venv/bin/python -m bench.publish_cost [--rounds N] [--jobs N] [--events N]

Each round publishes `jobs` x `events` events (a `started`, then `progress`) through a
`Publisher` into: the embedded Redis 6.2 (PUBLISH, no token: the standalone path), the
system redis-server >= 7 alone with AOF (PUBLISH), and a 3-primary cluster of it with AOF
(SPUBLISH and the idempotency token), and reads `INFO commandstats` (EVALSHA's
`usec_per_call`: the script's time inside Redis, its commands included). Rounds
interleave them so they see the same machine noise; medians are printed.
`bench.cluster` runs `cost_rounds` too (its figures go into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from dataclasses import dataclass, field
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


@dataclass(slots=True)
class Costs:
    """Per round: EVALSHA µs per call of each Redis (the cluster's over all its calls),
    and on the cluster each primary's calls and µs per call."""

    cluster_name: str
    figures: dict[str, list[float]]
    shares: list[list[int]] = field(default_factory=list)
    per_primary: list[list[float]] = field(default_factory=list)


def cost_rounds(
    plain: dict[str, RedisServer],
    cluster: RedisCluster,
    queue_url: str,
    *,
    rounds: int,
    jobs: int,
    events: int,
) -> Costs:
    """Interleaved rounds over each standalone Redis in `plain` and the cluster (its
    Celery broker / ARQ queue setting: `queue_url`)."""
    publishers = {
        name: Publisher(sync_client(Settings(redis_url=s.url), max_connections=2),
                        Settings(redis_url=s.url))
        for name, s in plain.items()
    }  # fmt: skip
    on_cluster = Settings(
        redis_url=cluster.url, celery_broker_url=queue_url, arq_redis_url=queue_url
    )
    clustered = Publisher(sync_client(on_cluster, max_connections=2), on_cluster)
    version = system_redis_server()[1]
    name = f"{cluster.primary_count}-primary cluster, Redis {version} + AOF, SPUBLISH + token"
    costs = Costs(name, {n: [] for n in [*plain, name]})
    nodes = [n.client() for n in cluster.primaries()]
    try:
        for _ in range(rounds):
            for label, publisher in publishers.items():
                publisher.redis.config_resetstat()
                publish_round(publisher, jobs, events)
                calls, usec = evalsha(publisher.redis)  # type: ignore[arg-type]
                costs.figures[label].append(usec / calls)
            for node in nodes:
                node.config_resetstat()
            publish_round(clustered, jobs, events)
            per_node = [evalsha(node) for node in nodes]
            costs.figures[name].append(sum(u for _, u in per_node) / sum(c for c, _ in per_node))
            costs.shares.append([c for c, _ in per_node])
            costs.per_primary.append([u / c if c else 0.0 for c, u in per_node])
    finally:
        for node in nodes:
            node.close()
        for publisher in [*publishers.values(), clustered]:
            publisher.redis.close()
    return costs


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
        costs = cost_rounds(
            plain, cluster, single.url, rounds=args.rounds, jobs=args.jobs, events=args.events
        )
    calls_per_round = args.jobs * args.events
    print(f"{args.rounds} interleaved rounds of {calls_per_round} publishes each\n")
    print("| Redis | EVALSHA µs per call (median) | min | max |")
    print("| --- | --- | --- | --- |")
    for name, values in costs.figures.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | "
              f"{max(values):.1f} |")  # fmt: skip
    totals = [sum(column) for column in zip(*costs.shares, strict=True)]
    print(f"\ncalls per cluster node over all rounds: {totals} (random job ids)")


if __name__ == "__main__":
    main()
