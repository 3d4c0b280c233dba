"""The task catalog: which tasks `POST /api/v1/jobs` may enqueue, and their parameters.

The web app validates a request here and enqueues by name, without importing Celery, ARQ
or any task code. The demo tasks are always in it; add your own with `Catalog.with_tasks`
and pass the result to `create_app(settings, catalog=...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_RUNNER = "celery"  # what `POST /api/v1/jobs` uses when the body names none


class UnknownTask(LookupError):
    """No such task in the catalog, or not on that runner."""


class InvalidParams(ValueError):
    """Parameters that do not satisfy the task's rules; the message says which and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IntParam:
    """An integer parameter within bounds, with a default (None: required)."""

    name: str
    minimum: int
    maximum: int
    default: int | None = None

    def parse(self, params: Mapping[str, Any]) -> int:
        if self.name not in params:
            if self.default is None:
                raise InvalidParams(f"{self.name} is required")
            return self.default
        value = params[self.name]
        if type(value) is not int:
            raise InvalidParams(f"{self.name} must be an integer")
        if not self.minimum <= value <= self.maximum:
            raise InvalidParams(f"{self.name} must be in {self.minimum}..{self.maximum}")
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """A task that may be enqueued by name: its parameters and the runners it runs on."""

    name: str
    params: tuple[IntParam, ...] = ()
    runners: frozenset[str] | None = None  # None: every runner the app was given
    description: str = ""
    # A rule across parameters: the reason they are refused together, or None.
    check: Callable[[Mapping[str, int]], str | None] | None = None

    def validate(self, params: object) -> dict[str, Any]:
        """The task's keyword arguments, defaults filled in; unknown names are refused."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidParams("params must be a JSON object")
        unknown = sorted(set(params) - {p.name for p in self.params})
        if unknown:
            raise InvalidParams(f"unknown parameter(s): {', '.join(map(str, unknown))[:200]}")
        values = {p.name: p.parse(params) for p in self.params}
        reason = self.check(values) if self.check is not None else None
        if reason is not None:
            raise InvalidParams(reason)
        return values


@dataclass(frozen=True, slots=True)
class Catalog:
    tasks: Mapping[str, TaskSpec]

    def with_tasks(self, specs: Iterable[TaskSpec]) -> Catalog:
        return Catalog({**self.tasks, **{spec.name: spec for spec in specs}})

    def resolve(self, name: object, runner: object, available: Collection[str]) -> TaskSpec:
        """The spec of task `name` on `runner`, one of the `available` runners' names (the
        runners given to `create_app`); `UnknownTask` saying which part is unknown."""
        if not isinstance(runner, str) or runner not in available:
            choices = ", ".join(repr(r) for r in sorted(available)) or "none"
            raise UnknownTask(f"unknown runner {str(runner)[:40]!r}: this app has {choices}")
        spec = self.tasks.get(name) if isinstance(name, str) else None
        if spec is None:
            raise UnknownTask(f"unknown task {str(name)[:80]!r}")
        if spec.runners is not None and runner not in spec.runners:
            raise UnknownTask(f"task {spec.name!r} does not run on {runner!r}")
        return spec


# The demo tasks are open to anyone who can reach the API: each is bounded to a few
# minutes of a worker's time, whatever its parameters.
DEMO_MAX_WORK_MS = 300_000


def _bounded_work(steps: int, step_ms: int) -> str | None:
    if steps * step_ms > DEMO_MAX_WORK_MS:
        return (
            f"{steps} steps of {step_ms} ms would take {steps * step_ms / 1000:g} s; "
            f"a demo task may take at most {DEMO_MAX_WORK_MS // 1000} s"
        )
    return None


DEMO_TASKS = (
    TaskSpec(
        name="demo.report",
        params=(
            IntParam(name="steps", minimum=1, maximum=1000, default=20),
            IntParam(name="step_ms", minimum=0, maximum=60000, default=200),
        ),
        description="Builds a CSV report in named steps and attaches it for download.",
        check=lambda p: _bounded_work(p["steps"], p["step_ms"]),
    ),
    TaskSpec(
        name="demo.fail",
        params=(
            IntParam(name="fail_at", minimum=0, maximum=100, default=50),
            IntParam(name="step_ms", minimum=0, maximum=60000, default=200),
        ),
        description="Fails with a clear error at the given percent.",
        # It reports every 10 % up to `fail_at` (workers/tasks/report.py: fail_plan).
        check=lambda p: _bounded_work(-(-p["fail_at"] // 10) + 1, p["step_ms"]),
    ),
)


def default_catalog() -> Catalog:
    return Catalog({spec.name: spec for spec in DEMO_TASKS})
