"""Per-job and per-watch access tokens: signed, scoped, expiring (itsdangerous).

Format: itsdangerous `URLSafeTimedSerializer` with `PROGRESS_SECRET` and a salt per
purpose (`progress.job`, `progress.watch`): `<base64url(JSON id)>.<timestamp>.<HMAC>`,
URL-safe, valid for `PROGRESS_TOKEN_TTL` seconds. A user's backend that enqueues its own
tasks calls `mint_token(settings, job_id)` and hands the token to its page.
"""

from __future__ import annotations

import secrets
from enum import Enum

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from progress_streamer.protocol.settings import Settings, check_secret

JOB_SALT = "progress.job"
WATCH_SALT = "progress.watch"


class Verdict(Enum):
    """What a presented token says about a resource."""

    GRANTED = "granted"
    INVALID = "invalid"  # missing, malformed, forged or expired: 401
    OTHER = "other"  # valid, but for another job or watch: 403


class TokenSigner:
    """Mints and checks tokens of one purpose (jobs or watches).

    Refuses a missing or short secret (`SettingsError` naming `PROGRESS_SECRET`) at
    construction, so no code path can sign or verify with a guessable key.
    """

    def __init__(self, secret: str | None, salt: str, ttl: int) -> None:
        self._serializer = URLSafeTimedSerializer(check_secret(secret), salt=salt)
        self.ttl = ttl

    def mint(self, scope_id: str) -> str:
        token = self._serializer.dumps(scope_id)
        assert isinstance(token, str)
        return token

    def verify(self, token: str | None, scope_id: str) -> Verdict:
        if not token:
            return Verdict.INVALID
        try:
            granted = self._serializer.loads(token, max_age=self.ttl)
        except SignatureExpired:
            return Verdict.INVALID
        except (BadSignature, ValueError, TypeError):
            return Verdict.INVALID
        return Verdict.GRANTED if granted == scope_id else Verdict.OTHER


def job_signer(settings: Settings) -> TokenSigner:
    return TokenSigner(_signing_key(settings), JOB_SALT, settings.token_ttl)


def watch_signer(settings: Settings) -> TokenSigner:
    return TokenSigner(_signing_key(settings), WATCH_SALT, settings.token_ttl)


def _signing_key(settings: Settings) -> str | None:
    """The secret with auth on; with `PROGRESS_AUTH=none` nothing is signed or checked,
    and a random key keeps anything minted by mistake from verifying anywhere."""
    return settings.secret if settings.auth_enabled else secrets.token_urlsafe(32)


def mint_token(settings: Settings, job_id: str) -> str:
    """A token granting access to `job_id` alone, for `?token=` or `Authorization: Bearer`.

    For backends that enqueue their own Celery tasks: `mint_token(Settings.from_env(),
    result.id)`. Needs `PROGRESS_SECRET` (the web processes' secret, at least 32 bytes):
    `SettingsError` otherwise.
    """
    return TokenSigner(settings.secret, JOB_SALT, settings.token_ttl).mint(job_id)
