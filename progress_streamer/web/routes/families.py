"""`POST /api/v1/jobs` with `group`, `chain` or `group` + `then`: one parent job with
children (SPEC.md, "Groups"). Every child is checked against the catalog first; one bad
child refuses the whole request (422 naming its index) before anything is sent."""

from __future__ import annotations

import uuid
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from progress_streamer.protocol.family import FamilyKind, InvalidFamily
from progress_streamer.protocol.runner import ChildJob, UnsupportedFamily
from progress_streamer.web.catalog import DEFAULT_RUNNER, InvalidParams, UnknownTask
from progress_streamer.web.errors import ApiError
from progress_streamer.web.services import Services

FAMILY_KEYS = ("group", "chain")


def is_family_request(body: dict[str, Any]) -> bool:
    return any(key in body for key in FAMILY_KEYS)


def family_form(body: dict[str, Any], max_children: int) -> tuple[FamilyKind, list[Any], bool]:
    """(kind, the child specs in order, fail_fast) of a request body, or 422."""
    if "task" in body or ("group" in body and "chain" in body):
        raise _invalid("give one of `task`, `group` or `chain`")
    if "chain" in body and "then" in body:
        raise _invalid("`then` follows a `group` (a chord), not a `chain`")
    fail_fast = body.get("fail_fast", False)
    if not isinstance(fail_fast, bool):
        raise _invalid("fail_fast must be true or false")
    kind = FamilyKind.CHAIN if "chain" in body else FamilyKind.GROUP
    specs = body[kind.value]
    if not isinstance(specs, list) or not specs:
        raise _invalid(f"`{kind.value}` must be a non-empty list of job specs")
    if "then" in body:
        kind, specs = FamilyKind.CHORD, [*specs, body["then"]]
    if len(specs) > max_children:
        raise _invalid(
            f"{len(specs)} children is over the limit of {max_children} (PROGRESS_MAX_CHILDREN)"
        )
    return kind, specs, fail_fast


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_params", message)


def _children(
    services: Services, kind: FamilyKind, specs: list[Any], runner: Any
) -> list[ChildJob]:
    children = []
    for index, spec in enumerate(specs):
        name = "then" if kind is FamilyKind.CHORD and index == len(specs) - 1 else f"child {index}"
        if not isinstance(spec, dict):
            raise _invalid(f"{name}: a job spec must be an object {{task, params}}")
        try:
            task = services.catalog.resolve(spec.get("task"), runner, services.runners)
            params = task.validate(spec.get("params"))
        except UnknownTask as exc:
            raise ApiError(422, "unknown_task", f"{name}: {exc}") from None
        except InvalidParams as exc:
            raise _invalid(f"{name}: {exc}") from None
        children.append(ChildJob(job_id=uuid.uuid4().hex, task=task.name, params=params))
    return children


async def create_family(request: Request, services: Services, body: dict[str, Any]) -> Response:
    from progress_streamer.web.routes.jobs import job_urls  # the one place URLs are made

    kind, specs, fail_fast = family_form(body, services.settings.max_children)
    runner_name = body.get("runner", DEFAULT_RUNNER)
    children = _children(services, kind, specs, runner_name)
    runner = services.runners[runner_name]
    parent_id = uuid.uuid4().hex
    try:
        await anyio.to_thread.run_sync(
            runner.enqueue_family, parent_id, kind.value, children, fail_fast
        )
    except (UnsupportedFamily, InvalidFamily) as exc:
        raise _invalid(str(exc)) from None
    urls = job_urls(request, parent_id)
    token = services.job_tokens.mint(parent_id) if services.settings.auth_enabled else None
    answer = {
        "job_id": parent_id,
        "status": "pending",
        **urls,
        "token": token,
        "kind": kind.value,
        "children": [{"job_id": c.job_id, **job_urls(request, c.job_id)} for c in children],
    }
    return JSONResponse(answer, status_code=202, headers={"Location": urls["status_url"]})
