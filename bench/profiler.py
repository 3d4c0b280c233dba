"""Profile hints for our server: py-spy attached during fan-out and held (`--profile`).

py-spy samples the server from the load core, in `raw` (collapsed stacks) format;
`summarize()` turns the stacks into the functions that hold the most samples, by self
time and by inclusive time, which is what to look at before optimising the hot path.
Profiling costs the server a little: figures of a profiled run are marked as such.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent) + "/"
PROJECT_CODE = (" (progress_streamer/", " (app/", " (workers/")


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


class Profiler:
    """`py-spy record` on one process until `stop()` (SIGINT makes it write its file)."""

    def __init__(self, pid: int, output: Path, rate: int = 250) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.output = output
        self.log = output.with_suffix(".log")
        args = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking"]
        args += ["--format", "raw", "--output", str(output)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def summarize(raw: Path, top: int = 20) -> str:
    """The functions with the most samples, as Markdown tables: by self time (a frame
    of the event loop's runner there is time spent in uvloop's C code: polling and socket
    writes), and by inclusive time within the project's own code."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if any(marker in frame for marker in PROJECT_CODE):
                inclusive[frame] += count
    if not total:
        return "py-spy recorded no samples."

    def rows(counter: Counter[str]) -> list[str]:
        return [f"| {100 * n / total:.1f} % | `{name}` |" for name, n in counter.most_common(top)]

    return "\n".join(
        [
            f"{total:,} samples.",
            "",
            "| self | function |",
            "| --- | --- |",
            *rows(own),
            "",
            "| inclusive | function (the project's code) |",
            "| --- | --- |",
            *rows(inclusive),
        ]
    )


def _short(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path.removeprefix(ROOT)})" if path else name
