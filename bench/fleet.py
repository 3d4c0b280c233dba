"""The fleet: the load-generator processes as the harness drives them.

Starts `bench.loadgen` processes pinned to the load core, splits the streams between
them, sends each command to all of them at once and merges their replies (counts add
up, latencies are concatenated). Every reply is awaited with a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.machine import LOAD_CORE, cpu_seconds, taskset

ROOT = Path(__file__).resolve().parent.parent


@dataclass(slots=True)
class Established:
    """How a ramp-up went: streams open, failures by reason, and how long it took."""

    established: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    open_by_path: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Received:
    received: int
    timed: int  # of which on timed streams (each with its latency)
    last: float  # when the last counted event arrived (UNIX time), 0 if none did
    open: int
    ended: int
    latencies: array[float]


class Fleet:
    """`processes` load generators; `close()` stops them all, whatever happened."""

    def __init__(self, processes: int, reply_timeout: float = 120.0) -> None:
        self.size = processes
        self.reply_timeout = reply_timeout
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for _ in range(self.size):
            proc = await asyncio.create_subprocess_exec(
                *taskset(LOAD_CORE),
                sys.executable,
                "-m",
                "bench.loadgen",
                "900",  # each process ends by itself after 15 idle minutes
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
                limit=256 * 1024 * 1024,
            )
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids)

    async def _ask(self, proc: asyncio.subprocess.Process, command: dict[str, Any]) -> Any:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(command).encode() + b"\n")
        await proc.stdin.drain()
        async with asyncio.timeout(self.reply_timeout):
            line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator {proc.pid} exited (code {proc.returncode})")
        return json.loads(line)

    async def _ask_all(self, commands: list[dict[str, Any]]) -> list[Any]:
        return await asyncio.gather(
            *(self._ask(p, c) for p, c in zip(self.procs, commands, strict=True))
        )

    async def connect(
        self,
        port: int,
        paths: list[str],
        timed: list[bool],
        *,
        concurrency: int = 64,
        handshake_s: float = 10.0,
        within_s: float = 60.0,
    ) -> Established:
        """Open one stream per path (timed or quiet), spread over the processes: the
        timed streams all in the first process, so that no sweep of quiet streams ever
        delays their reads; the quiet ones over the others."""
        if self.size == 1:
            shares = [(paths, timed)]
        else:
            on_time = [p for p, t in zip(paths, timed, strict=True) if t]
            quiet = [p for p, t in zip(paths, timed, strict=True) if not t]
            shares = [(on_time, [True] * len(on_time))]
            shares += [
                (quiet[i :: self.size - 1], [False] * len(quiet[i :: self.size - 1]))
                for i in range(self.size - 1)
            ]
        replies = await self._ask_all(
            [
                {
                    "cmd": "connect",
                    "host": "127.0.0.1",
                    "port": port,
                    "paths": share_paths,
                    "timed": share_timed,
                    "concurrency": concurrency,
                    "timeout": handshake_s,
                    "within": within_s,
                }
                for share_paths, share_timed in shares
            ]
        )
        result = Established()
        for reply in replies:
            result.established += reply["established"]
            result.failed.update(reply["failed"])
            result.seconds = max(result.seconds, reply["seconds"])
            result.open_by_path.update(reply["open_by_path"])
        return result

    async def reset(self, since: float) -> None:
        await self._ask_all([{"cmd": "reset", "since": since}] * self.size)

    async def count(self) -> Received:
        replies = await self._ask_all([{"cmd": "count"}] * self.size)
        return _merge(replies)

    async def collect(self) -> Received:
        replies = await self._ask_all([{"cmd": "collect"}] * self.size)
        return _merge(replies)

    async def close_streams(self) -> None:
        await self._ask_all([{"cmd": "close"}] * self.size)

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None and proc.stdin is not None:
                proc.stdin.write(b'{"cmd": "exit"}\n')
        for proc in self.procs:
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.procs.clear()


def _merge(replies: list[dict[str, Any]]) -> Received:
    latencies = array("f")
    for reply in replies:
        if "latencies" in reply:
            latencies.frombytes(base64.b64decode(reply["latencies"]))
    return Received(
        received=sum(r["received"] for r in replies),
        timed=sum(r["timed"] for r in replies),
        last=max(r["last"] for r in replies),
        open=sum(r["open"] for r in replies),
        ended=sum(r["ended"] for r in replies),
        latencies=latencies,
    )
