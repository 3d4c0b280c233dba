"""`AsyncProgressClient`: `ProgressClient` for asyncio code (services, Jupyter's loop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from progress_streamer.client.errors import body_of, error_of, json_of
from progress_streamer.client.requests import Enqueued, JobRef, Requests
from progress_streamer.client.resume import Resume, StreamEnded, read_timeout
from progress_streamer.protocol.event import ProgressEvent


class AsyncProgressClient:
    """See `ProgressClient`; every call is awaited, streams are async iterators."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.requests = Requests(base_url, token=token, api_key=api_key)
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout, read=None))

    async def __aenter__(self) -> AsyncProgressClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def enqueue(self, task: str, *, runner: str | None = None, **params: Any) -> Enqueued:
        request = self.requests.enqueue(task, runner, params)
        return Enqueued.of(json_of(await self._http.post(**request)))

    async def status(self, job_id: str, token: str | None = None) -> dict[str, Any]:
        return json_of(await self._http.get(**self.requests.job(job_id, token)))

    async def cancel(self, job_id: str, token: str | None = None) -> dict[str, Any]:
        return json_of(await self._http.delete(**self.requests.job(job_id, token)))

    async def download(self, job_id: str, path: str | Path, token: str | None = None) -> Path:
        async with self._http.stream("GET", **self.requests.result(job_id, token)) as response:
            if response.status_code != 200:
                await response.aread()
                raise error_of(response.status_code, body_of(response))
            target = self.requests.target(Path(path), response.headers)
            with target.open("wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
        return target

    async def events(
        self, job_id: str, token: str | None = None, *, last_event_id: int | None = None
    ) -> AsyncIterator[ProgressEvent]:
        resume = Resume(job_ids=(job_id,))
        if last_event_id is not None:
            resume.last_id, resume.seqs[job_id] = str(last_event_id), last_event_id
        async for event in self._follow(lambda: self.requests.events(job_id, token), resume):
            yield event

    async def wait(
        self,
        job_id: str,
        token: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the sync client's signature)
    ) -> ProgressEvent:
        """The job's terminal event; `TimeoutError` past `timeout` seconds."""

        async def terminal() -> ProgressEvent:
            async for event in self.events(job_id, token):
                if event.is_terminal:
                    return event
            raise RuntimeError(f"the stream of job {job_id} ended without its end")

        try:
            return await asyncio.wait_for(terminal(), timeout)
        except TimeoutError:
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s") from None

    async def watch(self, jobs: Sequence[JobRef]) -> AsyncIterator[ProgressEvent]:
        created = json_of(await self._http.post(**self.requests.watch(jobs)))
        resume = Resume(job_ids=tuple(job_id for job_id, _ in self.requests.refs(jobs)))
        async for event in self._follow(lambda: self.requests.watch_events(created), resume):
            yield event

    async def _follow(self, request: Any, resume: Resume) -> AsyncIterator[ProgressEvent]:
        while not resume.over:
            try:
                async for event in self._one_try(request(), resume):
                    yield event
            except StreamEnded:
                return
            except (httpx.TransportError, SSEError) as exc:
                resume.failed(str(exc) or type(exc).__name__)
            if not resume.over:
                await asyncio.sleep(resume.retry_seconds)

    async def _one_try(
        self, request: dict[str, Any], resume: Resume
    ) -> AsyncIterator[ProgressEvent]:
        async with aconnect_sse(
            self._http, "GET", headers=resume.headers(), timeout=read_timeout(resume), **request
        ) as source:
            response = source.response
            if response.status_code != 200:
                await response.aread()
                retry_after = response.headers.get("retry-after")
                resume.check(response.status_code, body_of(response), retry_after)
                resume.failed(f"HTTP {response.status_code}")
                return
            async for sse in source.aiter_sse():
                event = resume.accept(sse.data, sse.id, sse.retry)
                resume.remaining()  # a ping or an event: time to check the deadline
                if event is not None:
                    yield event
                if resume.over:
                    return
