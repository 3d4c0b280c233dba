"""Cluster figures: what Redis Cluster mode (3 primaries, sharded pub/sub) costs and gains
against one Redis, in one run.

    .venv/bin/python -m bench.cluster            # `make bench` runs it after bench.scaleout
    .venv/bin/python -m bench.cluster --quick    # tiny sizes: checks the harness

Starts Debian's redis-server (>= 7) alone with AOF, a 3-primary cluster of it (AOF, as
`tests/support/redis_cluster.py` forms it) and the embedded Redis as the non-cluster
broker/queue Redis that cluster mode requires, then:
1. fanout: the web process's CPU per delivery and its latency in the fan-out steps,
   standalone vs cluster, rounds interleaved (`bench.cluster_fanout`);
2. costs: Redis CPU per publish-script call, per primary, and each primary's share of
   the calls (`bench.publish_cost`);
3. throughput: publisher processes flat out into one Redis vs the 3 primaries, with
   each Redis's CPU and a projection to a core per Redis (`bench.publish_rate`);
4. reroute: slot migration -> re-subscribed, primary killed -> streams flowing again,
   each on a cluster of its own (`bench.reroute`).
The tables (`bench.cluster_report`) go into docs/benchmarks.md between this module's
own markers (not with `--quick`, unless `--docs` says so); raw figures to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench import document, scenarios
from bench.cluster_fanout import Mode, interleaved_fanout
from bench.cluster_report import block
from bench.fleet import Fleet
from bench.machine import LOAD_CORE, load_average, pin_to, raise_open_files_limit
from bench.publish_cost import cost_rounds
from bench.publish_rate import PublishRate, Target
from bench.reroute import kills, migrations
from bench.servers import Backend
from progress_streamer.redis_server import RedisServer
from tests.support.redis_cluster import RedisCluster, system_redis_server

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench-cluster:begin (written by `python -m bench.cluster`; overwritten) -->"
END = "<!-- bench-cluster:end -->"
SCENARIOS = "fanout,costs,throughput,reroute"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    clients: int
    jobs: int
    rates: tuple[int, ...]  # published events/s over all jobs (x clients/jobs deliveries)
    step_seconds: float
    fanout_rounds: int
    cost_rounds: int
    cost_jobs: int  # per round; many jobs, so that the shares measure the slot spread
    cost_events: int
    publishers: int
    rate_seconds: float
    rate_rounds: int
    migrations: int
    kills: int


# The fan-out's clients, jobs and step length are bench.scenarios' (so bench.run's).
FULL = Sizes(
    clients=scenarios.FULL.fanout_clients,
    jobs=scenarios.FULL.fanout_jobs,
    rates=(1_000, 4_000, 4_500),  # x 10 clients per job: 10,000, 40,000, 45,000 deliveries/s
    step_seconds=scenarios.FULL.step_seconds,
    fanout_rounds=3,
    cost_rounds=5,
    cost_jobs=400,
    cost_events=5,
    publishers=4,
    rate_seconds=4.0,
    rate_rounds=3,
    migrations=5,
    kills=3,
)
QUICK = Sizes(
    clients=scenarios.QUICK.fanout_clients,
    jobs=scenarios.QUICK.fanout_jobs,
    rates=scenarios.QUICK.fanout_rates,
    step_seconds=scenarios.QUICK.step_seconds,
    fanout_rounds=1,
    cost_rounds=1,
    cost_jobs=20,
    cost_events=3,
    publishers=2,
    rate_seconds=0.5,
    rate_rounds=1,
    migrations=1,
    kills=1,
)


@dataclass(frozen=True, slots=True)
class Setup:
    """The Redis servers of a run: one alone, a 3-primary cluster, the queue's."""

    single: RedisServer
    cluster: RedisCluster
    queue: RedisServer
    open_files: int

    def modes(self) -> list[Mode]:
        base = Backend(
            redis_url=self.single.url, redis_port=self.single.port, key_prefix="cluster",
            open_files=self.open_files, nchan=None,
        )  # fmt: skip
        primaries = self.cluster.primaries()
        clustered = dataclasses.replace(
            base, redis_url=self.cluster.url, redis_port=primaries[0].port,
            queue_url=self.queue.url,
        )  # fmt: skip
        return [
            Mode("standalone", base, (_pid(self.single),), (self.single.url,)),
            Mode(
                "cluster, 3 primaries",
                clustered,
                tuple(_pid(n.server) for n in primaries),
                tuple(n.server.url for n in primaries),
            ),
        ]

    def targets(self) -> list[Target]:
        return [
            Target(m.name, m.backend.redis_url, m.backend.queue_url, m.pids, m.node_urls)
            for m in self.modes()
        ]


def _pid(server: RedisServer) -> int:
    assert server.pid is not None
    return server.pid


async def run(setup: Setup, sizes: Sizes, wanted: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "fanout" in wanted:
        fleet = Fleet(2)
        await fleet.start()
        try:
            results["fanout"] = await interleaved_fanout(
                setup.modes(), fleet, rounds=sizes.fanout_rounds, clients=sizes.clients,
                jobs=sizes.jobs, rates=sizes.rates, seconds=sizes.step_seconds,
            )  # fmt: skip
        finally:
            await fleet.close()
        _lap("fanout")
    if "costs" in wanted:
        results["costs"] = await asyncio.to_thread(
            cost_rounds, {"standalone": setup.single}, setup.cluster, setup.queue.url,
            rounds=sizes.cost_rounds, jobs=sizes.cost_jobs, events=sizes.cost_events,
        )  # fmt: skip
        _lap("costs")
    if "throughput" in wanted:
        results["throughput"] = await asyncio.to_thread(throughput, setup, sizes)
        _lap("throughput")
    if "reroute" in wanted:
        results["reroute"] = await reroute(setup, sizes)
        _lap("reroute")
    return results


def throughput(setup: Setup, sizes: Sizes) -> dict[str, list[dict[str, Any]]]:
    rate = PublishRate(sizes.publishers)
    found: dict[str, list[dict[str, Any]]] = {t.name: [] for t in setup.targets()}
    try:
        for number in range(sizes.rate_rounds):
            targets = setup.targets()
            for target in targets if number % 2 == 0 else targets[::-1]:
                found[target.name].append(rate.measure(target, sizes.rate_seconds))
    finally:
        rate.close()
    return found


async def reroute(setup: Setup, sizes: Sizes) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, scenario, repeats in (("migrations", migrations, sizes.migrations),
                                   ("kills", kills, sizes.kills)):  # fmt: skip
        try:
            found[key] = await scenario(setup.queue.url, setup.open_files, repeats)
        except Exception as exc:  # the other one still gets measured
            found[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return found


_STARTED = time.monotonic()


def _lap(what: str) -> None:
    print(f"{what}: done at {time.monotonic() - _STARTED:.0f} s", file=sys.stderr)


def parse_args(argv: list[str]) -> argparse.Namespace:
    return document.parse_args(argv, "python -m bench.cluster", __doc__ or "", SCENARIOS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    binary, version = system_redis_server()
    if binary is None:
        raise SystemExit(f"bench.cluster needs Redis >= 7: {version}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    open_files = raise_open_files_limit()
    pin_to(LOAD_CORE)
    load, started = load_average(), time.time()
    with (
        RedisServer(binary, appendonly=True) as single,
        RedisCluster(3, binary=binary) as cluster,
        RedisServer() as queue,
    ):
        setup = Setup(single, cluster, queue, open_files)
        results = uvloop.run(run(setup, sizes, wanted))
    results["redis_version"] = f"Debian's redis-server {version}, AOF on (appendfsync always)"
    command = " ".join(["python -m bench.cluster", *argv]).strip()
    text = block(results, sizes, command, load, started)
    raw = json.dumps(results, indent=1, default=dataclasses.asdict)
    document.save(text, raw, args, name="cluster", started=started, markers=(BEGIN, END))
    return 0


if __name__ == "__main__":
    sys.exit(main())
