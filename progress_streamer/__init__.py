"""progress-streamer: live job progress for Celery and ARQ, streamed over Server-Sent Events.

The public API lives in these sub-packages, each with its `__all__` (docs/python-api.md):

- `progress_streamer.protocol`: statuses, the event, the publishers (no web or task library);
- `progress_streamer.celery`: `install(app)`, `ProgressTask`, `progress()`, `CeleryRunner`;
- `progress_streamer.arq`: `with_progress`, `progress_worker_settings`, `ArqRunner`;
- `progress_streamer.web`: `create_app`, `mint_token`, `Settings`, the catalog, `JobRunner`;
- `progress_streamer.client`: `ProgressClient`, `AsyncProgressClient` (and the
  `progress-streamer` command, `progress_streamer.cli`);
- `progress_streamer.tqdm`: a tqdm bar that streams to the job running it.

Importing this package imports none of them, so a web process never loads Celery or ARQ.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.2.0"
