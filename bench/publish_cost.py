"""Redis CPU per publish-script call, one Redis against a Redis Cluster, and the share of
the calls each primary takes.

    .venv/bin/python -m bench.publish_cost [--rounds N] [--jobs N] [--events N]
    .venv/bin/python -m bench.publish_cost --decompose   # the cluster's cost taken apart

Each round publishes `jobs` x `events` events (a `started`, then `progress`) through a
`Publisher` into: the embedded Redis 6.2 (PUBLISH, no token: the standalone path), the
system redis-server >= 7 alone with AOF (PUBLISH), and a 3-primary cluster of it with AOF
(SPUBLISH and the idempotency token), and reads `INFO commandstats` (EVALSHA's
`usec_per_call`: the script's time inside Redis, its commands included). Rounds
interleave them so they see the same machine noise; medians are printed.
`bench.cluster` runs `cost_rounds` too (its figures go into docs/benchmarks.md).

`--decompose` takes the cluster's extra cost apart, in interleaved rounds of five
variants of the same call (the publish script's EVALSHA): on one Redis >= 7 with AOF,
PUBLISH without and with the idempotency token, and SPUBLISH; on the cluster, SPUBLISH
without and with the token (what cluster mode runs).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from progress_streamer.protocol.connections import sync_client
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.keys import KeySpace
from progress_streamer.protocol.publisher import Publisher, publish_call
from progress_streamer.protocol.scripts import publish_script
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


def decomposed_round(
    client: Any,
    settings: Settings,
    nodes: list[redis.Redis],
    *,
    sharded: bool,
    token: bool,
    jobs: int,
    events: int,
) -> float:
    """EVALSHA µs per call over `nodes` for one variant of the publish script's call:
    `sharded` (SPUBLISH) or not, with an idempotency token or without."""
    sha = hashlib.sha1(publish_script(sharded).encode()).hexdigest()
    keyspace = KeySpace(settings.key_prefix)
    for node in nodes:
        node.config_resetstat()
    # The jobs side by side, one event of each per pipeline: Redis kept busy, as under load.
    ids = [uuid.uuid4().hex for _ in range(jobs)]
    for i in range(events):
        pipe = client.pipeline(transaction=False)
        for job in ids:
            draft = (
                EventDraft(job_id=job, status=JobStatus.STARTED)
                if i == 0
                else EventDraft(job_id=job, status=JobStatus.PROGRESS, percent=float(i % 100))
            )
            call = publish_call(
                keyspace.job(job), draft, settings, token=uuid.uuid4().hex if token else None
            )
            pipe.execute_command("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
        pipe.execute()
    calls, usec = (sum(x) for x in zip(*(evalsha(node) for node in nodes), strict=True))
    return usec / calls


def decompose(single: RedisServer, cluster: RedisCluster, queue_url: str, args: Any) -> None:
    """What the cluster's cost per call is made of: the token, SPUBLISH, cluster mode."""
    plain = Settings(redis_url=single.url)
    on_cluster = Settings(
        redis_url=cluster.url, celery_broker_url=queue_url, arq_redis_url=queue_url
    )
    one, many = sync_client(plain, max_connections=2), sync_client(on_cluster, max_connections=2)
    nodes = [n.client() for n in cluster.primaries()]
    for sharded in (False, True):
        for node in [one, *nodes]:
            node.script_load(publish_script(sharded))
    variants = {  # name: client, settings, nodes, sharded, token
        "one Redis, PUBLISH": (one, plain, [one], False, False),
        "one Redis, PUBLISH + token": (one, plain, [one], False, True),
        "one Redis, SPUBLISH": (one, plain, [one], True, False),
        "cluster, SPUBLISH": (many, on_cluster, nodes, True, False),
        "cluster, SPUBLISH + token (what cluster mode runs)": (many, on_cluster, nodes, True, True),
    }
    figures: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (client, settings, where, sharded, token) in variants.items():
            figures[name].append(decomposed_round(
                client, settings, where, sharded=sharded, token=token,
                jobs=args.jobs, events=args.events,
            ))  # fmt: skip
    base = statistics.median(figures["one Redis, PUBLISH"])
    print("| variant | EVALSHA µs per call (median) | against one Redis, PUBLISH | range |")
    print("| --- | --- | --- | --- |")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / base:.2f} | "
              f"{min(values):.1f}-{max(values):.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument(
        "--decompose", action="store_true",
        help="instead: the cluster's cost per call taken apart (token, SPUBLISH, cluster mode)",
    )  # fmt: skip
    args = parser.parse_args()
    system, version = system_redis_server()
    if system is None:
        raise SystemExit(version)
    if args.decompose:
        with (
            RedisServer(system, appendonly=True) as single,
            RedisCluster(3) as cluster,
            RedisServer() as queue,
        ):
            decompose(single, cluster, queue.url, args)
        return
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
