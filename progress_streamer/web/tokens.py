"""Per-job and per-watch access tokens: signed, scoped, expiring (itsdangerous).

Format: itsdangerous `URLSafeTimedSerializer` with `PROGRESS_SECRET` and a salt per
purpose (`progress.job`, `progress.watch`): `<base64url(JSON payload)>.<timestamp>.<HMAC>`,
URL-safe, valid for `PROGRESS_TOKEN_TTL` seconds after it was signed. The payload is

- a job token that may also cancel: `"<job_id>"` (what `POST /api/v1/jobs` returns);
- a view-only job token: `["<job_id>", "view"]` (`mint_token(..., view_only=True)`):
  status, stream, result, watches, but `403` on `DELETE`;
- a watch token: `["<watch_id>", <expires_at>]`: it also ends at `expires_at` (UNIX
  seconds), the earliest expiry of the job tokens it was made from, so a watch never
  outlives the access it was built on.

A user's backend that enqueues its own tasks calls `mint_token(settings, job_id)` and
hands the token to its page.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from progress_streamer.protocol.settings import Settings, check_secret

JOB_SALT = "progress.job"
WATCH_SALT = "progress.watch"
VIEW = "view"


class Verdict(Enum):
    """What a presented token says about a resource."""

    GRANTED = "granted"
    INVALID = "invalid"  # missing, malformed, forged or expired: 401
    OTHER = "other"  # valid, but for another job or watch: 403


@dataclass(frozen=True, slots=True)
class Grant:
    """A checked token: its verdict, whether it may only view, and when it expires."""

    verdict: Verdict
    view_only: bool = False
    expires_at: float = 0.0


DENIED = Grant(Verdict.INVALID)


class TokenSigner:
    """Mints and checks tokens of one purpose (jobs or watches).

    Refuses a missing or short secret (`SettingsError` naming `PROGRESS_SECRET`) at
    construction, so no code path can sign or verify with a guessable key.
    """

    def __init__(self, secret: str | None, salt: str, ttl: int) -> None:
        self._serializer = URLSafeTimedSerializer(check_secret(secret), salt=salt)
        self.ttl = ttl

    def mint(
        self, scope_id: str, *, view_only: bool = False, expires_at: float | None = None
    ) -> str:
        payload: Any = scope_id
        if view_only:
            payload = [scope_id, VIEW]
        elif expires_at is not None:
            payload = [scope_id, int(expires_at)]
        token = self._serializer.dumps(payload)
        assert isinstance(token, str)
        return token

    def verify(self, token: str | None, scope_id: str) -> Grant:
        if not token:
            return DENIED
        try:
            payload, signed = self._serializer.loads(token, max_age=self.ttl, return_timestamp=True)
        except (BadSignature, ValueError, TypeError):  # SignatureExpired is a BadSignature
            return DENIED
        expires_at = signed.timestamp() + self.ttl
        granted, view_only = payload, False
        if isinstance(payload, list) and len(payload) == 2:
            granted, extra = payload
            if extra == VIEW:
                view_only = True
            elif type(extra) is int:
                if extra <= time.time():
                    return DENIED
                expires_at = min(expires_at, extra)
            else:
                return DENIED
        if not isinstance(granted, str):
            return DENIED
        verdict = Verdict.GRANTED if granted == scope_id else Verdict.OTHER
        return Grant(verdict, view_only, expires_at)


def job_signer(settings: Settings) -> TokenSigner:
    return TokenSigner(_signing_key(settings), JOB_SALT, settings.token_ttl)


def watch_signer(settings: Settings) -> TokenSigner:
    return TokenSigner(_signing_key(settings), WATCH_SALT, settings.token_ttl)


def _signing_key(settings: Settings) -> str | None:
    """The secret with auth on; with `PROGRESS_AUTH=none` nothing is signed or checked,
    and a random key keeps anything minted by mistake from verifying anywhere."""
    return settings.secret if settings.auth_enabled else secrets.token_urlsafe(32)


def mint_token(settings: Settings, job_id: str, *, view_only: bool = False) -> str:
    """A token granting access to `job_id` alone, for `?token=` or `Authorization: Bearer`.

    For backends that enqueue their own Celery tasks: `mint_token(Settings.from_env(),
    result.id)`. `view_only=True` gives one that may watch and download but not cancel
    (for pages shown to people who should not stop the job). Needs `PROGRESS_SECRET`
    (the web processes' secret, at least 32 bytes): `SettingsError` otherwise.
    """
    return TokenSigner(settings.secret, JOB_SALT, settings.token_ttl).mint(
        job_id, view_only=view_only
    )
