"""Request-level authorization: the job/watch token and the optional enqueue API key."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from progress_streamer.protocol.settings import Settings
from progress_streamer.web.errors import ApiError
from progress_streamer.web.tokens import Grant, TokenSigner, Verdict


def presented_token(request: Request) -> str | None:
    """`Authorization: Bearer <token>` or `?token=` (EventSource cannot send headers)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query_params.get("token") or None


OPEN = Grant(Verdict.GRANTED, expires_at=float("inf"))  # what `PROGRESS_AUTH=none` grants


def require_token(
    settings: Settings,
    signer: TokenSigner,
    token: str | None,
    scope_id: str,
    what: str,
    *,
    to_change: bool = False,
) -> Grant:
    """The token's grant: 401 unless it is valid; 403 if it is valid for something else,
    or only for viewing when the request would change the job (`to_change`: cancel).

    Called before the job is looked up, so an unknown job with another job's token gets
    the same 403 as a known one (existence is not revealed).
    """
    if not settings.auth_enabled:
        return OPEN
    grant = signer.verify(token, scope_id)
    if grant.verdict is Verdict.INVALID:
        raise ApiError(401, "unauthorized", f"a valid token for this {what} is required")
    if grant.verdict is Verdict.OTHER:
        raise ApiError(403, "forbidden", f"the token does not grant access to this {what}")
    if to_change and grant.view_only:
        raise ApiError(403, "forbidden", f"a view-only token cannot change this {what}")
    return grant


def require_api_key(settings: Settings, request: Request) -> None:
    if settings.api_key is None:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), settings.api_key.encode()
    ):
        raise ApiError(401, "unauthorized", "POST /api/v1/jobs needs Authorization: Bearer <key>")
