"""The attached-file download: streamed from Redis a chunk at a time, each write bounded.

A 10 MB file read whole and handed to `Response` costs 10 MB (and more, in copies) per
concurrent download until the client has read it all; 60 such downloads took a web
process from 244 MB to 1.5 GB (docs/reliability.md). Here one chunk (`CHUNK_BYTES`) per
download is in memory at a time, and a client that stops reading is cut off after
`PROGRESS_SEND_TIMEOUT`, like a stalled event stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from progress_streamer.protocol.files import FileChanged

log = logging.getLogger(__name__)


class FileDownload(Response):
    """A `200` whose body comes from `chunks`, with `Content-Length: size`."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        size: int,
        media_type: str,
        headers: Mapping[str, str],
        send_timeout: float,
    ) -> None:
        super().__init__(None, media_type=media_type, headers={**headers})
        self.headers["content-length"] = str(size)
        self.chunks = chunks
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        try:
            async for chunk in self.chunks:
                async with asyncio.timeout(self.send_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except TimeoutError:
            log.info("download cut off: the client read nothing for %.0f s", self.send_timeout)
            return  # the server closes the connection: the response never completed
        except FileChanged as exc:
            log.warning("download cut off: %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
