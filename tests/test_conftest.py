"""The suite's own guard (tests/conftest.py): an unretrieved task exception is caught."""

from __future__ import annotations

import asyncio
import gc

from tests.conftest import UNRETRIEVED, unretrieved


async def test_an_unretrieved_task_exception_is_reported_to_the_guard() -> None:
    async def dies() -> None:
        raise RuntimeError("nobody awaits me")

    before = len(unretrieved.reports)
    task = asyncio.create_task(dies())
    await asyncio.sleep(0)  # it runs and fails; nobody retrieves the exception
    await asyncio.sleep(0)
    del task
    gc.collect()
    found = unretrieved.reports[before:]
    assert len(found) == 1 and UNRETRIEVED in found[0] and "nobody awaits me" in found[0]
    del unretrieved.reports[before:]  # seen: this test passes (the guard would fail it)
