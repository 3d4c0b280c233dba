"""Request-level authorization: the job/watch token and the optional enqueue API key."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from progress_streamer.protocol.settings import Settings
from progress_streamer.web.errors import ApiError
from progress_streamer.web.tokens import TokenSigner, Verdict


def presented_token(request: Request) -> str | None:
    """`Authorization: Bearer <token>` or `?token=` (EventSource cannot send headers)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query_params.get("token") or None


def require_token(
    settings: Settings, signer: TokenSigner, token: str | None, scope_id: str, what: str
) -> None:
    """401 unless the token is valid; 403 if it is valid for something else.

    Called before the job is looked up, so an unknown job with another job's token gets
    the same 403 as a known one (existence is not revealed).
    """
    if not settings.auth_enabled:
        return
    verdict = signer.verify(token, scope_id)
    if verdict is Verdict.INVALID:
        raise ApiError(401, "unauthorized", f"a valid token for this {what} is required")
    if verdict is Verdict.OTHER:
        raise ApiError(403, "forbidden", f"the token does not grant access to this {what}")


def require_api_key(settings: Settings, request: Request) -> None:
    if settings.api_key is None:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), settings.api_key.encode()
    ):
        raise ApiError(401, "unauthorized", "POST /api/v1/jobs needs Authorization: Bearer <key>")
