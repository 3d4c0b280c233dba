"""`ProgressClient`: the HTTP API and the event streams, from scripts and services."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from progress_streamer.client.errors import body_of, error_of, json_of
from progress_streamer.client.requests import Enqueued, JobRef, Requests
from progress_streamer.client.resume import Resume, StreamEnded, read_timeout
from progress_streamer.protocol.event import ProgressEvent


class ProgressClient:
    """A client of one progress-streamer deployment (`base_url`, its mount prefix
    included). `token` is the default job token; `api_key` authorises `enqueue`."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.requests = Requests(base_url, token=token, api_key=api_key)
        self._http = http or httpx.Client(timeout=httpx.Timeout(timeout, read=None))

    def __enter__(self) -> ProgressClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def enqueue(self, task: str, *, runner: str | None = None, **params: Any) -> Enqueued:
        """`POST /api/v1/jobs`: the new job's id, token and URLs."""
        request = self.requests.enqueue(task, runner, params)
        return Enqueued.of(json_of(self._http.post(**request)))

    def status(self, job_id: str, token: str | None = None) -> dict[str, Any]:
        """`GET /api/v1/jobs/{id}`: the job's status object."""
        return json_of(self._http.get(**self.requests.job(job_id, token)))

    def cancel(self, job_id: str, token: str | None = None) -> dict[str, Any]:
        """`DELETE /api/v1/jobs/{id}`: `revoked`; `Conflict` if it had already finished."""
        return json_of(self._http.delete(**self.requests.job(job_id, token)))

    def download(self, job_id: str, path: str | Path, token: str | None = None) -> Path:
        """Stream the job's attached file to `path` (a folder: the file's own name)."""
        with self._http.stream("GET", **self.requests.result(job_id, token)) as response:
            if response.status_code != 200:
                response.read()
                raise error_of(response.status_code, body_of(response))
            target = self.requests.target(Path(path), response.headers)
            with target.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        return target

    def events(
        self, job_id: str, token: str | None = None, *, last_event_id: int | None = None
    ) -> Iterator[ProgressEvent]:
        """The job's events until its terminal one, resuming across drops."""
        resume = Resume(job_ids=(job_id,))
        if last_event_id is not None:
            resume.last_id, resume.seqs[job_id] = str(last_event_id), last_event_id
        yield from self._follow(lambda: self.requests.events(job_id, token), resume)

    def wait(
        self, job_id: str, token: str | None = None, timeout: float | None = None
    ) -> ProgressEvent:
        """The job's terminal event (`result` or `error`); `TimeoutError` past `timeout`."""
        resume = Resume(job_ids=(job_id,))
        if timeout is not None:
            resume.deadline = time.monotonic() + timeout
        try:
            for event in self._follow(lambda: self.requests.events(job_id, token), resume):
                if event.is_terminal:
                    return event
        except TimeoutError:
            pass
        raise TimeoutError(f"job {job_id} did not finish within {timeout} s")

    def watch(self, jobs: Sequence[JobRef]) -> Iterator[ProgressEvent]:
        """Many jobs over one stream (`POST /api/v1/watches`), each until its end."""
        created = json_of(self._http.post(**self.requests.watch(jobs)))
        resume = Resume(job_ids=tuple(job_id for job_id, _ in self.requests.refs(jobs)))
        yield from self._follow(lambda: self.requests.watch_events(created), resume)

    def _follow(self, request: Any, resume: Resume) -> Iterator[ProgressEvent]:
        while not resume.over:
            try:
                yield from self._one_try(request(), resume)
            except StreamEnded:
                return
            except (httpx.TransportError, SSEError) as exc:
                resume.remaining()  # a read cut short by `wait`'s deadline ends here
                resume.failed(str(exc) or type(exc).__name__)  # a drop: resume from the last id
            if not resume.over:
                time.sleep(min(resume.retry_seconds, resume.remaining() or float("inf")))

    def _one_try(self, request: dict[str, Any], resume: Resume) -> Iterator[ProgressEvent]:
        with connect_sse(
            self._http, "GET", headers=resume.headers(), timeout=read_timeout(resume), **request
        ) as source:
            response = source.response
            if response.status_code != 200:
                response.read()
                retry_after = response.headers.get("retry-after")
                resume.check(response.status_code, body_of(response), retry_after)
                resume.failed(f"HTTP {response.status_code}")
                return
            for sse in source.iter_sse():
                event = resume.accept(sse.data, sse.id, sse.retry)
                resume.remaining()  # a ping or an event: time to check the deadline
                if event is not None:
                    yield event
                if resume.over:
                    return
