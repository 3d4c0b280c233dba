"""Arguments, commands and exit codes of `progress-streamer` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from progress_streamer.cli.display import display_for, dump
from progress_streamer.client import ProgressClient, ProgressClientError
from progress_streamer.protocol.status import JobStatus

EXIT_BY_STATUS = {JobStatus.SUCCESS: 0, JobStatus.FAILURE: 1, JobStatus.REVOKED: 2}
EXIT_LOST = 3
EXIT_USAGE = 64


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """argparse exits 2 on a usage error, which here means `revoked`."""
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parser() -> Parser:
    root = Parser(
        prog="progress-streamer",
        description="Follow, start, cancel and download progress-streamer jobs.",
        epilog="Exit codes of watch: 0 success, 1 failure, 2 revoked, 3 lost or unreachable.",
    )
    root.add_argument("--url", default=os.environ.get("PROGRESS_URL", "http://localhost:8000"))
    root.add_argument("--token", default=os.environ.get("PROGRESS_TOKEN"))
    root.add_argument("--api-key", default=os.environ.get("PROGRESS_API_KEY"))
    commands = root.add_subparsers(dest="command", required=True, parser_class=Parser)
    watch = commands.add_parser("watch", help="follow a job to its end")
    watch.add_argument("job_id")
    watch.add_argument("--json", action="store_true", help="one event's JSON per line")
    enqueue = commands.add_parser("enqueue", help="start a job (POST /api/v1/jobs)")
    enqueue.add_argument("task")
    enqueue.add_argument("params", nargs="*", metavar="key=value")
    enqueue.add_argument("--runner")
    enqueue.add_argument("--watch", action="store_true", help="then follow it")
    enqueue.add_argument("--json", action="store_true")
    for name, text in (("status", "the job's status"), ("cancel", "cancel the job")):
        commands.add_parser(name, help=text).add_argument("job_id")
    download = commands.add_parser("download", help="save the job's attached file")
    download.add_argument("job_id")
    download.add_argument("path", nargs="?", default=".")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    client = ProgressClient(args.url, token=args.token, api_key=args.api_key)
    try:
        return run(args, client)
    except ProgressClientError as exc:
        sys.stderr.write(f"progress-streamer: {exc}\n")
        return EXIT_LOST
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def run(args: argparse.Namespace, client: ProgressClient) -> int:
    if args.command == "watch":
        return follow(client, args.job_id, args.token, args.json)
    if args.command == "enqueue":
        job = client.enqueue(args.task, runner=args.runner, **params_of(args.params))
        dump({"job_id": job.job_id, "token": job.token, "events_url": job.events_url})
        return follow(client, job.job_id, job.token, args.json) if args.watch else 0
    if args.command == "status":
        dump(client.status(args.job_id))
    elif args.command == "cancel":
        dump(client.cancel(args.job_id))
    elif args.command == "download":
        sys.stdout.write(f"{client.download(args.job_id, args.path)}\n")
    return 0


def follow(client: ProgressClient, job_id: str, token: str | None, as_json: bool) -> int:
    """Show the job's events to the end; the exit code its end stands for."""
    display = display_for(as_json)
    end = None
    try:
        for event in client.events(job_id, token):
            display.show(event)
            end = event
    finally:
        display.close()
    if end is None or not end.is_terminal:
        return EXIT_LOST  # the stream ended on 204 before we saw anything: ask status
    if end.error is not None and end.error.type == "StateLost":
        return EXIT_LOST
    return EXIT_BY_STATUS[end.status]


def params_of(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs; a value that parses as JSON is that (`steps=5` is 5)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            parser().error(f"parameters are key=value, not {pair!r}")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params
