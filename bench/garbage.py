"""Garbage collection in the web process: what open streams cost a full collection, and
what ended streams leave for the collector.

    .venv/bin/python -m bench.garbage [--baseline REF] [--streams N]   (default 10,000)

Python's full (generation 2) collection walks every object the process tracks, and every
stream of the process waits meanwhile; it runs once the objects that survived since the
last one reach a quarter of all. So what a stream costs a full collection is the number
of objects it holds, and what an ended stream leaves in a reference cycle (its
subscriber, its queued frames, the server's request cycle and transport) stays until the
next full collection.

For ours, and the baseline commit if given (`git archive`, as `bench.run --baseline`), in
turn: the Procfile's web command pinned to the server core, with `bench/gc_probe` first
on its path (a `sitecustomize` that times every collection and reports on SIGUSR1);
`N` streams opened over `N` started jobs from raw sockets, then ended, half by the job's
terminal event, half by the client leaving. Reported: the full collections while the
streams opened, one full collection with all of them open, the objects per open stream,
and what the collector found unreachable once they had ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from argparse import Namespace
from pathlib import Path
from typing import Any

from bench import document
from bench.machine import (
    LOAD_CORE,
    load_average,
    machine_info,
    pin_to,
    raise_open_files_limit,
)
from bench.servers import Backend, RunningServer, export_tree, start_server
from progress_streamer.protocol.connections import sync_client
from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.publisher import Publisher
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.redis_server import RedisServer

BEGIN, END = "<!-- bench-garbage:begin -->", "<!-- bench-garbage:end -->"
PROBE = str(Path(__file__).resolve().parent / "gc_probe")
FULL_STREAMS, QUICK_STREAMS = 10_000, 100
TIMEOUT = 60.0  # for any one wait: a server that stalls longer has failed


def measure(name: str, backend: Backend, streams: int) -> dict[str, Any]:
    """Open and end `streams` streams on a fresh server; the probe's three reports."""
    server, out = start(name, backend)
    try:
        settings = Settings(redis_url=backend.redis_url, key_prefix=backend.key_prefix)
        redis = sync_client(settings, max_connections=4)
        publisher = Publisher(redis, settings)
        jobs = [f"{name}-{uuid.uuid4().hex[:8]}-{i}" for i in range(streams)]
        for job in jobs:
            publisher.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
        reports = [report(server, out)]
        socks = open_streams(server.port, jobs)
        reports.append(report(server, out))
        half = streams // 2
        for job in jobs[:half]:  # these end with their job
            publisher.publish(EventDraft(job_id=job, status=JobStatus.SUCCESS, result=1))
        for sock in socks[:half]:
            read_to_the_end(sock)
        for sock in socks:  # the rest: the client leaves
            sock.close()
        wait_for(lambda: streams_open_now(server.port) == 0, "the streams to end")
        reports.append(report(server, out))
        redis.close()
        return {"base": reports[0], "opened": reports[1], "ended": reports[2]}
    finally:
        server.stop()
        out.unlink(missing_ok=True)


def start(name: str, backend: Backend) -> tuple[RunningServer, Path]:
    """The server with the probe on its path, and the file the probe reports into."""
    handle, out = tempfile.mkstemp(prefix=f"bench-garbage-{name}-", suffix=".jsonl")
    os.close(handle)
    server = start_server(name, backend, extra_env={"BENCH_GC_OUT": out}, path_first=PROBE)
    return server, Path(out)


def report(server: RunningServer, out: Path) -> dict[str, Any]:
    """Have the probe report (a full collection included), and read its line."""
    before = len(out.read_text().splitlines()) if out.exists() else 0
    server.process.send_signal(signal.SIGUSR1)
    wait_for(
        lambda: out.exists() and len(out.read_text().splitlines()) > before,
        "the probe's report (is bench/gc_probe on the server's path?)",
    )
    line: dict[str, Any] = json.loads(out.read_text().splitlines()[before])
    return line


def open_streams(port: int, jobs: list[str]) -> list[socket.socket]:
    socks = []
    for job in jobs:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sock.sendall(f"GET /api/v1/jobs/{job}/events HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        socks.append(sock)
    for sock in socks:
        head = sock.recv(4096)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"a stream did not open: {head[:200]!r}")
    return socks


def read_to_the_end(sock: socket.socket) -> None:
    """Until the response's last chunk (the connection stays open: keep-alive)."""
    seen = b""
    while not seen.endswith(b"0\r\n\r\n"):
        data = sock.recv(65536)
        if not data:
            return
        seen = seen[-16:] + data


def streams_open_now(port: int) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        body = b""
        while data := sock.recv(65536):
            body += data
    for line in body.decode().splitlines():
        if line.startswith("progress_open_streams "):
            return float(line.split()[1])
    raise RuntimeError("no progress_open_streams in /metrics")


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {TIMEOUT:g} s for {what}")
        time.sleep(0.05)


def rows(result: dict[str, Any], streams: int) -> list[tuple[str, str]]:
    """One server's figures, labelled, in the table's order."""
    base, opened, ended = result["base"], result["opened"], result["ended"]
    per_stream = (opened["tracked"] - base["tracked"]) / streams
    left = ended["unreachable"] / streams
    return [
        ("full collections while the streams opened", f"{opened['full_collections']:,}"),
        ("their total pause, ms", f"{opened['full_total_ms']:,.0f}"),
        ("the longest, ms", f"{opened['full_max_ms']:,.0f}"),
        ("one full collection with every stream open, ms", f"{opened['full_now_ms']:,.0f}"),
        ("objects tracked per open stream", f"{per_stream:,.1f}"),
        ("objects left for the collector per ended stream", f"{left:,.1f}"),
        ("a full collection once they had ended, ms", f"{ended['full_now_ms']:,.0f}"),
        ("a full collection before any stream, ms", f"{base['full_now_ms']:,.0f}"),
    ]


def block(results: dict[str, Any], streams: int, command: str, load: str, started: float) -> str:
    names = list(results)
    head = f"| {streams:,} streams opened, then ended | " + " | ".join(names) + " |"
    lines = [head, "| --- |" + " --- |" * len(names)]
    columns = [rows(results[name], streams) for name in names]
    for index, (label, _) in enumerate(columns[0]):
        lines.append(f"| {label} | " + " | ".join(column[index][1] for column in columns) + " |")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    return "\n\n".join(
        [
            f"Run of {when} ({(time.time() - started) / 60:.1f} min), command: `{command}`. "
            f"Machine: {machine_info().describe()}; load average at the start: {load}. "
            f"Versions: {document.versions()}.",
            "#### Garbage collection in the web process",
            "\n".join(lines),
        ]
    )


def parse_args(argv: list[str]) -> Namespace:
    return document.parse_args(
        argv,
        "python -m bench.garbage",
        __doc__ or "",
        "garbage",
        extra=[
            ("--streams", {"type": int, "default": None, "help": "streams (default 10,000)"}),
            ("--baseline", {"default": None, "help": "also run ours as of this commit"}),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    streams = args.streams or (QUICK_STREAMS if args.quick else FULL_STREAMS)
    raise_open_files_limit()
    pin_to(LOAD_CORE)
    load, started = load_average(), time.time()
    baseline, label = export_tree(args.baseline) if args.baseline else (None, "")
    results: dict[str, Any] = {}
    try:
        with RedisServer() as redis_server:
            backend = Backend(
                redis_url=redis_server.url,
                redis_port=redis_server.port,
                key_prefix=f"bench-gc-{uuid.uuid4().hex[:6]}",
                open_files=streams + 1024,
                nchan=None,
                baseline=baseline,
            )
            results["ours"] = measure("ours", backend, streams)
            if baseline is not None:
                results[f"baseline: {label}"] = measure("baseline", backend, streams)
    finally:
        if baseline is not None:
            shutil.rmtree(baseline, ignore_errors=True)
    command = " ".join(["python -m bench.garbage", *argv]).strip()
    text = block(results, streams, command, load, started)
    raw = json.dumps(results, indent=1)
    document.save(text, raw, args, name="garbage", started=started, markers=(BEGIN, END))
    return 0


if __name__ == "__main__":
    sys.exit(main())
