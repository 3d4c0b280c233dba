"""How the command shows a job: a live bar on a terminal, plain lines elsewhere, or JSON.

On a terminal (a TTY) a tqdm bar redraws in place: percent (or the count when the task
counts), step, message, rate and time left. Piped or in CI logs a redrawn bar is noise,
so a plain line is printed per change of step and status, and at most one line every
`EVERY_SECONDS` in between, plus the end. `--json` prints each event's JSON, one per line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Protocol

from tqdm import tqdm

from progress_streamer.protocol.event import ProgressEvent

EVERY_SECONDS = 5.0


class Display(Protocol):
    def show(self, event: ProgressEvent) -> None: ...

    def close(self) -> None: ...


def time_left(seconds: float | None) -> str:
    """'about 2 min left', as the JS client says it."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"about {max(round(seconds), 1)} s left"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"


COUNTS = ("running", "succeeded", "failed", "revoked", "pending")


def children_text(counts: dict[str, int] | None) -> str:
    """A parent job's children, the zeros left out: "3 running, 2 succeeded, 3 pending"."""
    if not counts:
        return ""
    return ", ".join(f"{counts[k]} {k}" for k in COUNTS if counts.get(k))


def describe(event: ProgressEvent) -> str:
    """One human line: status, percent or count, step, message, rate, time left."""
    parts = [event.status.value]
    if event.percent is not None:
        parts.append(f"{event.percent:g}%")
    if event.current is not None:
        parts.append(f"{event.current}/{event.total}" if event.total else f"{event.current}")
    parts += [p for p in (event.step, event.message, event.log and f"log: {event.log}") if p]
    parts.append(children_text(event.children))
    if event.rate is not None and event.rate > 0:
        parts.append(f"{event.rate:.3g}/s")
    parts.append(time_left(event.eta_seconds))
    if event.error is not None:
        parts.append(f"{event.error.type}: {event.error.message}")
    return " · ".join(p for p in parts if p)


class JsonLines:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def show(self, event: ProgressEvent) -> None:
        self.out.write(event.raw.decode() + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class PlainLines:
    """A line per step or status change, at most one every `every` seconds between."""

    def __init__(self, out: IO[str], every: float = EVERY_SECONDS) -> None:
        self.out, self.every = out, every
        self.last_key: tuple[object, ...] = ()
        self.last_time = float("-inf")

    def show(self, event: ProgressEvent) -> None:
        key = (event.status, event.step)
        now = time.monotonic()
        if (
            key != self.last_key
            or event.is_terminal
            or event.log
            or now - self.last_time >= self.every
        ):
            self.out.write(describe(event) + "\n")
            self.out.flush()
            self.last_key, self.last_time = key, now

    def close(self) -> None:
        pass


class Bar:
    """A tqdm bar redrawn in place (percent, or the count when there is no percent)."""

    def __init__(self, out: IO[str]) -> None:
        self.bar = tqdm(total=100, file=out, bar_format="{desc} {bar} {percentage:3.0f}% {postfix}")
        self.bar.set_description_str("pending")

    def show(self, event: ProgressEvent) -> None:
        if event.log:
            self.bar.write(f"log: {event.log}", file=self.bar.fp)
        if event.percent is not None:
            self.bar.n = event.percent
        elif event.status.value == "success":
            self.bar.n = 100
        self.bar.set_description_str(event.step or event.status.value, refresh=False)
        rate = f"{event.rate:.3g}/s" if event.rate is not None and event.rate > 0 else ""
        extra = [event.message, children_text(event.children), rate, time_left(event.eta_seconds)]
        self.bar.set_postfix_str(" · ".join(p for p in extra if p), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def display_for(as_json: bool, out: IO[str] | None = None) -> Display:
    out = out or sys.stdout
    if as_json:
        return JsonLines(out)
    return Bar(out) if out.isatty() else PlainLines(out)


def dump(body: object, out: IO[str] | None = None) -> None:
    (out or sys.stdout).write(json.dumps(body, indent=2) + "\n")
