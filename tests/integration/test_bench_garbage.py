"""The garbage-collection benchmark's harness runs end to end at a tiny size.

`bench.garbage --quick` in a subprocess (it pins itself to a core and raises its
open-files limit), writing into a temporary docs file: the probe reports from inside
the Procfile's web process, and ended streams leave nothing for the collector.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.garbage import BEGIN, END, QUICK_STREAMS
from tests.support.bench_harness import run_quick

pytestmark = pytest.mark.slow


def test_the_garbage_harness_runs_at_a_tiny_size(tmp_path: Path) -> None:
    _, results = run_quick(
        "bench.garbage", tmp_path, markers=(BEGIN, END), results="garbage-*.json",
        timeout=120,  # typically 10 s; generous for a loaded CI machine
    )  # fmt: skip
    ours = results["ours"]
    assert ours["opened"]["tracked"] - ours["base"]["tracked"] >= QUICK_STREAMS
    assert ours["ended"]["unreachable"] < QUICK_STREAMS  # a cycle per stream would be 25 each
