"""Request bodies: size and shape limits answer clear JSON errors, never a 500."""

from __future__ import annotations

import httpx
import pytest

from progress_streamer.protocol.settings import Settings
from tests.support.server import running_server


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/watches"])
async def test_a_deeply_nested_body_is_invalid_json_not_a_500(
    settings: Settings, path: str
) -> None:
    """Regression (issue 14, item 8): 1.1 KB of nested arrays answered 500 with a
    traceback (the body parsed, then formatting it in an error message recursed)."""
    bodies = [
        nested(550),
        b'{"task": ' + nested(550) + b"}",
        b'{"task": "demo.report", "params": {"steps": ' + nested(550) + b"}}",
        b'{"jobs": ' + nested(550) + b"}",
        nested(100_000),  # past the parser's own limit
    ]
    with running_server(settings.replace(max_body_bytes=300_000)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for body in bodies:
                response = await client.post(path, content=body)
                assert response.status_code == 400, (body[:40], response.text)
                assert response.json()["error"]["code"] == "invalid_json"
