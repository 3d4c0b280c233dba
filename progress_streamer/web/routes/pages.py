"""The demo page at `/` and the JS client under `/static`.

The files are kept once, in the repository's `static/`; the wheel carries them as
`progress_streamer/static/`. A source checkout (or an editable install) has no such
folder inside the package, so the checkout's `static/` is used there.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

_PACKAGE = Path(__file__).resolve().parents[2]
STATIC_DIR = next(
    (d for d in (_PACKAGE / "static", _PACKAGE.parent / "static") if d.is_dir()),
    _PACKAGE / "static",
)

PLACEHOLDER = """<!doctype html><meta charset="utf-8"><title>progress-streamer</title>
<p>The demo page (static/index.html) is not installed.
See <a href="healthz">healthz</a> and the API under api/v1.</p>
"""


async def index(request: Request) -> Response:
    page = STATIC_DIR / "index.html"
    if page.is_file():
        return FileResponse(page, media_type="text/html; charset=utf-8")
    return HTMLResponse(PLACEHOLDER)
