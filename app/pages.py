"""The demo page at `/` and the JS client under `/static` (files from `static/`)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

PLACEHOLDER = """<!doctype html><meta charset="utf-8"><title>progress-streamer</title>
<p>The demo page (static/index.html) is not installed.
See <a href="/healthz">/healthz</a> and the API under /api/v1.</p>
"""


async def index(request: Request) -> Response:
    page = STATIC_DIR / "index.html"
    if page.is_file():
        return FileResponse(page, media_type="text/html; charset=utf-8")
    return HTMLResponse(PLACEHOLDER)
