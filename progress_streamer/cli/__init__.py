"""The `progress-streamer` command: follow, start, cancel and download jobs.

    progress-streamer watch JOB_ID --url URL [--token T] [--json]
    progress-streamer enqueue TASK key=value ... [--runner R] [--watch]
    progress-streamer status JOB_ID | cancel JOB_ID | download JOB_ID [PATH]

`watch` exits 0 on `success`, 1 on `failure`, 2 on `revoked`, 3 when the job is lost
(`StateLost`), unknown, not ours, or the server unreachable; 64 on a usage error.
`--url`, `--token` and `--api-key` default to PROGRESS_URL, PROGRESS_TOKEN and
PROGRESS_API_KEY.
"""

from __future__ import annotations

from progress_streamer.cli.main import main

__all__ = ["main"]
