"""The run command: brings up an embedded Redis and every Procfile process; Ctrl-C stops all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from progress_streamer.redis_server import free_port
from tests.support import ROOT

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_run_command_starts_everything_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "PROGRESS_"))}
    env["PORT"] = str(port)
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "app.launch"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert launcher.poll() is None, log_path.read_text()
            time.sleep(0.2)  # polling an HTTP port that has no event to await
        else:
            pytest.fail(f"the web process never became ready:\n{log_path.read_text()}")
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200 and "start-report" in page.text
        output = log_path.read_text()
        assert f"http://127.0.0.1:{port}/" in output
        assert "embedded Redis" in output
        pids = [int(p) for p in re.findall(r"started \w+ \(pid (\d+)\)", output)]
        assert len(pids) == 3  # web, worker, arq
        redis_pid = int(
            subprocess.check_output(
                ["pgrep", "-f", f"redis-server 127.0.0.1:{_redis_port(output)}"]
            ).split()[0]
        )
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=30)
    assert launcher.returncode == 0
    for pid in [*pids, redis_pid]:
        assert not alive(pid), f"process {pid} still runs after Ctrl-C"


def _redis_port(output: str) -> str:
    match = re.search(r"redis://127\.0\.0\.1:(\d+)/0", output)
    assert match is not None, output
    return match.group(1)
