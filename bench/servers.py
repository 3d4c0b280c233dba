"""The three servers under test, each started pinned to the server core on a free port.

- `ours`: the real web app, started from the Procfile's `web:` command (uvicorn with
  uvloop and the Procfile's protocol, httptools bounded), with the stream caps raised for
  a load from one address (the connection cap follows them);
- `naive`: `bench.naive_app` under the same uvicorn options (the Procfile's protocol);
- `nchan`: nginx with the nchan module, one worker process (`bench.nchan`);
- `baseline`: ours as of another commit (`--baseline REF`: its tree, exported with `git
  archive`, comes first on the server's import path), so a change is compared with what
  it replaces in the same run, on the same machine state.

`RunningServer` reads the server's CPU time and RSS from /proc over its process tree,
and the Redis connections it holds from its sockets; `stop()` always waits for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.procfile import command_of, option_of
from bench.machine import (
    SERVER_CORE,
    connections_to,
    cpu_seconds,
    process_tree,
    rss_bytes,
    taskset,
)
from bench.nchan import Nchan, nginx_command, write_conf
from progress_streamer.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("ours", "naive", "nchan", "baseline")
LABELS = {
    "ours": "ours",
    "naive": "naive (sse-starlette, 1 Redis conn/client)",
    "nchan": "Nchan",
    "baseline": "ours at the baseline commit",
}


class ServerFailed(RuntimeError):
    """A server did not come up, with the tail of its log."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """What every server needs to know: where Redis is and the key prefix of the run."""

    redis_url: str
    redis_port: int
    key_prefix: str
    open_files: int
    nchan: Nchan | None
    baseline: str | None = None  # the exported tree of the baseline commit
    # Cluster mode (`redis_url` is `redis+cluster://...`): the non-cluster Redis of the
    # Celery broker and the ARQ queue, which the web process then requires.
    queue_url: str | None = None


class RunningServer:
    def __init__(
        self, name: str, port: int, process: subprocess.Popen[bytes], directory: str
    ) -> None:
        self.name = name
        self.port = port
        self.process = process
        self.directory = directory

    @property
    def log(self) -> Path:
        return Path(self.directory, "server.log")

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def rss_bytes(self) -> int:
        return rss_bytes(self.pids())

    def redis_connections(self, redis_port: int) -> int:
        return connections_to(self.pids(), redis_port)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        texts = [p.read_text(errors="replace") for p in Path(self.directory).glob("*.log")]
        return "\n".join(texts)[-chars:]

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            # nginx stops at once on SIGTERM; uvicorn ends its streams gracefully.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def command_for(
    name: str, backend: Backend, port: int, directory: str
) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Later options win with uvicorn's CLI: loopback only, and a backlog for 10,000 clients.
    overrides = ["--host", "127.0.0.1", "--port", str(port), "--backlog", "4096"]
    if name in ("ours", "baseline"):
        if name == "baseline":
            assert backend.baseline is not None
            env["PYTHONPATH"] = backend.baseline  # before this tree's editable install
            overrides += ["--app-dir", backend.baseline]
        env.update(
            REDIS_URL=backend.redis_url,
            PORT=str(port),
            PROGRESS_AUTH="none",
            PROGRESS_KEY_PREFIX=backend.key_prefix,
            PROGRESS_MAX_STREAMS="20000",
            PROGRESS_MAX_STREAMS_PER_CLIENT="20000",
            PROGRESS_SHUTDOWN_SECONDS="2",
        )
        if backend.queue_url is not None:
            env.update(CELERY_BROKER_URL=backend.queue_url, ARQ_REDIS_URL=backend.queue_url)
        return command_of("web", env, *overrides), env
    if name == "naive":
        env.update(BENCH_REDIS_URL=backend.redis_url, BENCH_KEY_PREFIX=backend.key_prefix)
        args = [sys.executable, "-m", "uvicorn", "bench.naive_app:create_app_from_env"]
        args += ["--factory", "--loop", "uvloop", "--http", option_of("web", "--http")]
        args += ["--no-access-log"]
        return [*args, *overrides], env
    if name == "nchan":
        assert backend.nchan is not None
        conf = write_conf(backend.nchan, directory, port, backend.open_files)
        return nginx_command(backend.nchan, directory, conf), env
    raise ValueError(f"unknown server {name!r}")


def export_tree(ref: str) -> tuple[str, str]:
    """The files of commit `ref` in a new temporary directory (the caller removes it),
    and `ref (commit)` to name it in the report."""
    found = subprocess.run(
        ["git", "rev-parse", "--short", f"{ref}^{{commit}}"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        raise SystemExit(f"--baseline {ref}: {found.stderr.strip()}")
    commit = found.stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
    directory = tempfile.mkdtemp(prefix="bench-baseline-")
    subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True)
    return directory, f"{ref} ({commit})"


def start_server(
    name: str,
    backend: Backend,
    timeout: float = 30.0,
    *,
    extra_env: Mapping[str, str] | None = None,
    path_first: str | None = None,
) -> RunningServer:
    """Start `name` pinned to the server core and wait until it accepts connections.
    `extra_env` is added to its environment; `path_first` goes first on its PYTHONPATH
    (e.g. `bench.garbage`'s probe)."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix=f"bench-{name}-")
    args, env = command_for(name, backend, port, directory)
    env.update(extra_env or {})
    if path_first is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (path_first, env.get("PYTHONPATH")) if p)
    with open(Path(directory, "server.log"), "wb") as log:
        process = subprocess.Popen(
            [*taskset(SERVER_CORE), *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(name, port, process, directory)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            tail = server.log_tail()
            server.stop()
            raise ServerFailed(f"{name} exited at start:\n{tail}")
        if _accepts(port):
            return server
        time.sleep(0.05)
    tail = server.log_tail()
    server.stop()
    raise ServerFailed(f"{name} did not accept connections within {timeout:.0f} s:\n{tail}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
