"""Our web processes behind nginx with `deploy/nginx.conf`, as one server to the harness.

`start_proxied(backend, processes, affinity=...)` starts `processes` web processes (the
Procfile's command, as `bench.servers` starts ours) and nginx with the repository's
configuration (`app.nginx`) in front; the result answers what `bench.scenarios` asks of
a server (its port is nginx's; its CPU time and RSS are the web processes' and nginx's
together), and each part's own figures: CPU, RSS, bytes written (`/proc/<pid>/io`),
the sockets' kernel buffers (`ss -m`), and each web process's `/metrics`.

Placement: the web processes and nginx may run on both cores (one web process per core
is the deployment's rule), while the load generators, the publisher and Redis stay on
core 1 as in every scenario: on this 2-core machine the second web process shares its
core with the load, which is the limit of the 1 vs 2 comparison.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.nginx import find_nginx, main_config, nginx_command, site_config
from bench.machine import cpu_seconds, process_tree, rss_bytes
from bench.servers import Backend, RunningServer, ServerFailed, _accepts, start_server
from progress_streamer.redis_server import free_port

BOTH_CORES = "0-1"
SKMEM = re.compile(r"skmem:\(r(\d+),rb\d+,t(\d+),tb\d+,f(\d+),w(\d+)")


def unpin(pid: int) -> None:
    """Let every thread of `pid` run on both cores (`start_server` pinned it to one)."""
    subprocess.run(["taskset", "-a", "-p", "-c", BOTH_CORES, str(pid)], capture_output=True)


def written_bytes(pids: list[int]) -> int:
    """Bytes these processes passed to write/send calls (`wchar` of /proc/<pid>/io)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("wchar:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


@dataclass(frozen=True, slots=True)
class SocketMemory:
    sockets: int
    buffer_bytes: int  # receive + send queues and forward allocations, summed (ss -m)


def socket_memory(filter_expr: str) -> SocketMemory:
    """The kernel buffers of the established TCP sockets `ss` selects (e.g. sport = :N)."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", filter_expr],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = [tuple(map(int, m.groups())) for m in SKMEM.finditer(out)]
    return SocketMemory(len(found), sum(sum(f) for f in found))


@dataclass(slots=True)
class Proxied:
    """nginx and the web processes behind it; quacks like `RunningServer`."""

    webs: list[RunningServer]
    nginx: subprocess.Popen[bytes]
    port: int
    directory: str
    affinity: bool
    name: str = "ours"
    metrics_client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.nginx

    def nginx_pids(self) -> list[int]:
        return process_tree(self.nginx.pid)

    def web_pids(self) -> list[int]:
        return [pid for web in self.webs for pid in web.pids()]

    def pids(self) -> list[int]:
        return self.web_pids() + self.nginx_pids()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def rss_bytes(self) -> int:
        return rss_bytes(self.pids())

    def redis_connections(self, redis_port: int) -> int:
        return sum(web.redis_connections(redis_port) for web in self.webs)

    def alive(self) -> bool:
        return self.nginx.poll() is None and all(web.alive() for web in self.webs)

    def nginx_log(self) -> str:
        error_log = Path(self.directory, "error.log")
        return error_log.read_text(errors="replace") if error_log.exists() else ""

    def log_tail(self, chars: int = 1500) -> str:
        webs = "\n".join(w.log_tail(chars) for w in self.webs)
        return f"{self.nginx_log()[-chars // 2 :]}\n{webs[-chars // 2 :]}"

    def metrics(self) -> list[dict[str, float]]:
        """Each web process's /metrics, name -> value."""
        found = []
        for web in self.webs:
            text = self.metrics_client.get(f"http://127.0.0.1:{web.port}/metrics").text
            values = {}
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    values[name] = float(value)
            found.append(values)
        return found

    def stop(self, timeout: float = 15.0) -> None:
        if self.nginx.poll() is None:
            self.nginx.terminate()
            try:
                self.nginx.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait(timeout=10)
        for web in self.webs:
            web.stop(timeout)
        self.metrics_client.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_proxied(
    backend: Backend, processes: int, *, affinity: bool, connections: int, timeout: float = 30
) -> Proxied:
    """`processes` web processes behind nginx (`connections`: nginx's worker connections)."""
    nginx = find_nginx()
    if nginx is None:
        raise ServerFailed("nginx is not installed")
    webs: list[RunningServer] = []
    try:
        for _ in range(processes):
            webs.append(start_server("ours", backend))
            unpin(webs[-1].process.pid)
    except BaseException:
        for web in webs:
            web.stop()
        raise
    folder = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    port = free_port()
    site = site_config([w.port for w in webs], listen=port, affinity=affinity)
    conf = main_config(folder, site, connections=connections)
    with open(folder / "server.log", "wb") as log:
        process = subprocess.Popen(
            ["taskset", "-c", BOTH_CORES, *nginx_command(nginx, folder, conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proxied = Proxied(webs, process, port, str(folder), affinity)
    deadline = time.monotonic() + timeout
    while not _accepts(port):
        if not proxied.alive() or time.monotonic() > deadline:
            tail = proxied.log_tail()
            proxied.stop()
            raise ServerFailed(f"nginx did not start:\n{tail}")
        time.sleep(0.05)
    return proxied
