"""Who may see a job: its own token, or a token of one of its parent jobs (SPEC.md,
"Groups": the parent's token grants the parent and each of its children, so a page can
show one bar and expand to the children). Used by the job routes and `POST /watches`."""

from __future__ import annotations

from progress_streamer.protocol.keys import StateField, is_valid_job_id
from progress_streamer.web.auth import require_token
from progress_streamer.web.errors import ApiError
from progress_streamer.web.services import Services
from progress_streamer.web.tokens import Grant, Verdict

MAX_DEPTH = 8  # nested canvases deeper than this are not looked through


async def require_job_token(
    services: Services, token: str | None, job_id: str, what: str = "job", *,
    to_change: bool = False,
) -> Grant:  # fmt: skip
    """`require_token` for `job_id`; where it says 403, a token valid for one of the job's
    parents (its state's `parent` link, up the family) grants it too. The link is read
    only after the token is known valid, and an unknown job has none: the answer for it
    stays the same 403 (existence is not revealed)."""
    settings, signer = services.settings, services.job_tokens
    try:
        return require_token(settings, signer, token, job_id, what, to_change=to_change)
    except ApiError as refused:
        if refused.status != 403:
            raise
        ancestor = job_id
        for _ in range(MAX_DEPTH):
            state = services.keyspace.job(ancestor).state
            raw: bytes | None = await services.redis.hget(state, StateField.PARENT)  # type: ignore[misc]
            if raw is None or not is_valid_job_id(ancestor := raw.decode()):
                break
            grant = signer.verify(token, ancestor)
            if grant.verdict is Verdict.GRANTED:
                if to_change and grant.view_only:
                    break
                return grant
        raise
