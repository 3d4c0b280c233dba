"""The URLs the app returns (`Location`, `status_url`, `events_url`, ...), under the path
it is served at.

Mounted in another app (`api.mount("/progress", progress_app)`, nested mounts included)
or behind a proxy that strips a prefix (uvicorn `--root-path /progress`), the app's routes
see paths relative to that prefix, which the server or the host's router puts in the
scope's `root_path`. Every URL handed to a client starts with it.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request

API = "/api/v1"


def api_url(request: Request, path: str) -> str:
    """`/api/v1` + `path`, as an absolute path under the app's `root_path`."""
    root = str(request.scope.get("root_path") or "").rstrip("/")
    # root_path is decoded; a header value must be ASCII, so it is quoted back.
    return quote(root, safe="/!$&'()*+,;=:@") + API + path
