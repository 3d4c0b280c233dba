"""The scale-out benchmark's harness runs end to end at a tiny size (not the benchmark).

`bench.scaleout --quick` in a subprocess (it pins itself to a core and raises its
open-files limit), writing into a temporary docs file: every configuration behind nginx
delivers, and the memory scenarios return figures. Skipped only without nginx.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.nginx import find_nginx
from bench.scaleout import BEGIN, CONFIGS, END
from tests.support.bench_harness import run_quick

pytestmark = pytest.mark.slow


@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (.ci/run installs it)")
def test_the_scaleout_harness_runs_at_a_tiny_size(tmp_path: Path) -> None:
    _, results = run_quick(
        "bench.scaleout", tmp_path, markers=(BEGIN, END), results="scaleout-*.json",
        timeout=100,  # typically 20 s; generous for a loaded CI machine
    )  # fmt: skip
    for name, processes, affinity in CONFIGS:
        fanout = results["fanout"][name]
        assert "error" not in fanout, fanout
        assert len(fanout["streams_per_process"]) == processes
        for step in [fanout["latency"], *fanout["steps"]]:
            assert step["delivered"] > 0 and step["p99_ms"] is not None
        per_event = fanout["latency"]["redis_deliveries"] / fanout["latency"]["published"]
        # One process, or affinity: each event leaves Redis once, never more.
        if processes == 1 or affinity:
            assert 0 < per_event <= 1.0, per_event
    streams = results["streams"]
    assert "error" not in streams, streams
    assert streams["streams"] > 0 and streams["hold_delivered"] == streams["hold_expected"]
    assert [row["events_kept"] for row in results["jobs"]] == [
        row["history"] for row in results["jobs"]
    ]
