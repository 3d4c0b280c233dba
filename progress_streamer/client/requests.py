"""The requests of the HTTP API, built once for both clients (URLs, auth, bodies)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

JobRef = tuple[str, str | None] | str  # a job id, or (job id, its token)


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueued:
    """What `POST /api/v1/jobs` answered: the job's id, its token and its URLs."""

    job_id: str
    token: str | None
    status_url: str
    events_url: str
    result_url: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Enqueued:
        return cls(**{name: body.get(name) for name in cls.__slots__})  # type: ignore[arg-type]


class Requests:
    """Keyword arguments for httpx (`url`, `params`, `headers`, `json`) per endpoint."""

    def __init__(self, base_url: str, *, token: str | None, api_key: str | None) -> None:
        self.base = base_url.rstrip("/")
        self.token, self.api_key = token, api_key

    def enqueue(self, task: str, runner: str | None, params: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"task": task, "params": dict(params)}
        if runner is not None:
            body["runner"] = runner
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {"url": f"{self.base}/api/v1/jobs", "json": body, "headers": headers}

    def job(self, job_id: str, token: str | None) -> dict[str, Any]:
        return {"url": f"{self.base}/api/v1/jobs/{job_id}", "headers": self._auth(token)}

    def result(self, job_id: str, token: str | None) -> dict[str, Any]:
        return {"url": f"{self.base}/api/v1/jobs/{job_id}/result", "headers": self._auth(token)}

    def events(self, job_id: str, token: str | None) -> dict[str, Any]:
        return {"url": f"{self.base}/api/v1/jobs/{job_id}/events", "params": self._query(token)}

    def watch(self, jobs: Sequence[JobRef]) -> dict[str, Any]:
        body = {"jobs": [{"job_id": job_id, "token": token} for job_id, token in self.refs(jobs)]}
        return {"url": f"{self.base}/api/v1/watches", "json": body}

    def watch_events(self, created: Mapping[str, Any]) -> dict[str, Any]:
        url = str(created["events_url"])
        if not url.startswith(("http://", "https://")):
            url = self._origin() + url  # an absolute path, with any mount prefix in it
        return {"url": url, "params": {"token": created["token"]} if created.get("token") else {}}

    def refs(self, jobs: Sequence[JobRef]) -> list[tuple[str, str | None]]:
        return [(job, self.token) if isinstance(job, str) else job for job in jobs]

    def target(self, path: Path, headers: Mapping[str, str]) -> Path:
        """Where a download goes: `path`, or inside it under the server's file name."""
        if not path.is_dir():
            return path
        disposition = headers.get("content-disposition", "")
        named = re.search(r"filename\*=UTF-8''([^;]+)", disposition)
        plain = re.search(r'filename="([^"]*)"', disposition)
        name = unquote(named[1]) if named else (plain[1] if plain else "result")
        return path / (Path(name).name or "result")

    def _auth(self, token: str | None) -> dict[str, str]:
        token = token or self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _query(self, token: str | None) -> dict[str, str]:
        token = token or self.token
        return {"token": token} if token else {}

    def _origin(self) -> str:
        match = re.match(r"^(https?://[^/]+)", self.base)
        return match[1] if match else self.base
