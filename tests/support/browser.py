"""Browser-test helpers: the web app as a real process, Chromium's launch, page recorders.

The web app runs as the Procfile's `web:` command (`uvicorn app.main:create_app_from_env
--factory ...`), so a test can SIGKILL it and start another on the same port. The page recorder
keeps every JS error and console error, and every frame the page's EventSources receive.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import ConsoleMessage, Error, Page, Request

from app.procfile import command_of
from progress_streamer.protocol.settings import Settings
from progress_streamer.redis_server import free_port
from tests.support.celery_worker import ROOT

CHROMIUM = "/usr/bin/chromium"  # Debian's: Playwright's own download does not work here
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# Runs before the page's own scripts: every EventSource the page opens also records the
# parsed `data` of each message it receives in `window.__frames` (what the page was sent).
RECORD_FRAMES = """
(() => {
  const frames = (window.__frames = []);
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      this.addEventListener("message", (m) => {
        try { frames.push(JSON.parse(m.data)); } catch { frames.push({ unparsable: m.data }); }
      });
    }
  };
})();
"""


class WebProcess:
    """The web app in a uvicorn subprocess on 127.0.0.1:`port`, with auth on."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.settings = settings
        self.port = port or free_port()
        self.logfile = Path(tempfile.mkdtemp(prefix="browser-web-")) / "web.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "REDIS_URL": s.redis_url,
            "PROGRESS_KEY_PREFIX": s.key_prefix,
            "PROGRESS_AUTH": s.auth,
            "PROGRESS_SECRET": s.secret or "",
            "PROGRESS_THROTTLE_MS": str(s.throttle_ms),
            "PROGRESS_LEASE_SECONDS": str(s.lease_seconds),
        }

    def start(self) -> None:
        environ = self.environ()
        command = command_of(
            "web", environ, "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning", "--timeout-graceful-shutdown", "2",
        )  # fmt: skip
        with self.logfile.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the web process did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no graceful end of streams, connections simply drop."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.logfile.parent, ignore_errors=True)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


class PageRecorder:
    """What went wrong on a page (JS errors, console errors) and which streams it opened."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.stream_urls: list[str] = []
        self.watch_posts = 0
        self.allowed: list[re.Pattern[str]] = []
        page.on("pageerror", self._page_error)
        page.on("console", self._console)
        page.on("request", self._request)

    def _page_error(self, error: Error) -> None:
        self.errors.append(f"pageerror: {error.message}")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} at {message.location}")

    def _request(self, request: Request) -> None:
        path = httpx.URL(request.url).path
        if path.endswith("/events"):
            self.stream_urls.append(request.url)
        elif path.endswith("/api/v1/watches") and request.method == "POST":  # under any prefix
            self.watch_posts += 1

    def allow(self, pattern: str) -> None:
        """Console errors matching `pattern` are expected (e.g. a server that was killed)."""
        self.allowed.append(re.compile(pattern))

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def frames(self, job_id: str | None = None) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = self.page.evaluate("window.__frames")
        return [f for f in frames if job_id is None or f.get("job_id") == job_id]
