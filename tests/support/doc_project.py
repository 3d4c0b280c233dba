"""A user's project built from a doc's own code blocks, and the processes that run it.

docs/django.md and docs/fastapi.md are tested by running what they show: every fenced
block whose first line names a file (`# myproj/main.py`, `{# reports/templates/x.html #}`)
is written to that path in a temporary folder, next to the few files a user's project has
before following the doc.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import httpx

FILE_LINE = re.compile(r"^(?:#|\{#)\s*([\w./-]+\.\w+)\s*(?:#\})?$")


def doc_files(markdown: str) -> dict[str, str]:
    """path -> content of every fenced block whose first line names a file."""
    files = {}
    for block in re.findall(r"^```\w*\n(.*?)^```", markdown, re.M | re.S):
        first, _, rest = block.partition("\n")
        if match := FILE_LINE.match(first.strip()):
            files[match[1]] = rest
    return files


def write_doc_project(
    doc: Path, folder: Path, expected: Iterable[str], extra: Mapping[str, str]
) -> dict[str, str]:
    """Writes the doc's files (each of `expected` must be there) and `extra` into `folder`."""
    files = doc_files(doc.read_text())
    missing = set(expected) - set(files)
    assert not missing, f"{doc.name} lost its blocks for {sorted(missing)}"
    for path, text in {**files, **extra}.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return files


class Process:
    """A subprocess in its own session, its output in a log file, killed with its group."""

    def __init__(self, name: str, command: list[str], *, cwd: Path, env: dict[str, str]):
        self.name = name
        self.logfile = cwd / f"{name}.log"
        with self.logfile.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False
