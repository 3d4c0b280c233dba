"""The runner contract: every method the app calls is declared, with defaults to inherit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from progress_streamer.protocol import PublishOutcome
from progress_streamer.protocol.runner import UnsupportedFamily, check_runner
from progress_streamer.protocol.settings import Settings
from progress_streamer.web import JobRunner, create_app


class Minimal(JobRunner):
    """A user's runner that writes only the two required methods."""

    def enqueue(self, job_id: str, task: str, params: dict[str, Any]) -> None:
        pass

    def cancel(self, job_id: str) -> PublishOutcome:
        return PublishOutcome(accepted=False, seq=0, reason="not_found")


class Duck:
    """A runner that does not subclass `JobRunner` and lacks the optional methods."""

    def enqueue(self, job_id: str, task: str, params: dict[str, Any]) -> None:
        pass


async def test_a_subclass_inherits_the_documented_defaults() -> None:
    runner = Minimal()
    check_runner("mine", runner)
    assert await runner.queue_status("j") is None
    with pytest.raises(UnsupportedFamily, match="runs no groups"):
        runner.enqueue_family("p", "group", [], False)
    await asyncio.wait_for(runner.run_settler(asyncio.Event()), 1)  # returns at once
    await runner.aclose()
    runner.close()


def test_create_app_refuses_an_incomplete_runner_naming_what_it_lacks(
    settings: Settings,
) -> None:
    with pytest.raises(TypeError, match=r"runner 'mine' .*lacks cancel, queue_status"):
        create_app(settings, runners={"mine": Duck()})  # type: ignore[dict-item]
    create_app(settings, runners={"mine": Minimal()})
