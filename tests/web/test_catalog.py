"""The task catalog: runner names come from the runners given to the app, not a list."""

from __future__ import annotations

import pytest

from progress_streamer.web import IntParam, InvalidParams, TaskSpec, UnknownTask, default_catalog


def test_a_runner_is_known_only_when_the_app_has_it() -> None:
    catalog = default_catalog()
    assert catalog.resolve("demo.report", "rq", {"rq"}).name == "demo.report"
    with pytest.raises(UnknownTask, match="this app has 'celery'"):
        catalog.resolve("demo.report", "arq", {"celery"})
    with pytest.raises(UnknownTask, match="has none"):
        catalog.resolve("demo.report", "celery", set())


def test_a_task_may_be_limited_to_some_runners() -> None:
    spec = TaskSpec(name="mine.export", runners=frozenset({"arq"}))
    catalog = default_catalog().with_tasks([spec])
    assert catalog.resolve("mine.export", "arq", {"arq", "celery"}) is spec
    with pytest.raises(UnknownTask, match="does not run on 'celery'"):
        catalog.resolve("mine.export", "celery", {"arq", "celery"})


def test_parameters_are_validated_with_defaults() -> None:
    spec = TaskSpec(name="mine.export", params=(IntParam(name="n", minimum=1, maximum=9),))
    with pytest.raises(InvalidParams):
        spec.validate({"n": 10})
    assert spec.validate({"n": 3}) == {"n": 3}
