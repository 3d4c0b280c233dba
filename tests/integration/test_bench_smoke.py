"""The benchmark harness itself runs end to end at a tiny size (not the benchmark).

`bench.run --quick` in a subprocess (it pins itself to a core and raises its open-files
limit, which must not leak into the test process), writing into a temporary docs file.
Nchan is only run where nginx and its module are installed: this test never installs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.document import BEGIN, END
from bench.nchan import find_nchan
from tests.support import bench_harness

pytestmark = pytest.mark.slow


def run_quick(tmp_path: Path, servers: str, *extra: str) -> tuple[str, dict[str, Any]]:
    return bench_harness.run_quick(
        "bench.run", tmp_path, "--servers", servers, "--no-install", *extra,
        markers=(BEGIN, END),
        timeout=90,  # typically 5 to 15 s; generous for a loaded CI machine
    )  # fmt: skip


def check_server(result: dict[str, Any], name: str) -> None:
    figures = result["runs"][0][name]
    assert "error" not in figures["idle"], figures["idle"]
    assert "error" not in figures["fanout"], figures["fanout"]
    for row in figures["idle"]:
        assert row["established"] == row["streams"]
        assert row["hold_delivered"] == row["hold_expected"] > 0
        assert row["rss_per_stream"] is not None
    fanout = figures["fanout"]
    assert fanout["established"] == fanout["clients"]
    for step in [fanout["latency"], *fanout["steps"]]:
        assert step["delivered"] > 0
        assert step["p99_ms"] is not None and step["p99_ms"] > 0
    held = figures["held"]
    assert "error" not in held, held
    assert [row["held"] for row in held] == [0, 50]  # the quick size
    for row in held:
        assert row["delivered"] == row["expected"] > 0
        assert row["late_pct"] is not None


def test_harness_runs_ours_and_the_naive_baseline(tmp_path: Path) -> None:
    stdout, result = run_quick(tmp_path, "ours,naive", "--worker-calls", "2000")
    assert result["skipped"] == {}, result["skipped"]
    for name in ("ours", "naive"):
        check_server(result, name)
    assert "| measure | ours | naive | ours/naive |" in stdout
    assert "#### Idle capacity" in stdout and "#### Fan-out" in stdout
    assert "#### Live deliveries while idle streams are held" in stdout
    assert result["runs"][0]["ours"]["fanout"]["steps"][0]["script_calls"] > 0
    assert "#### Worker cost" in stdout and "Celery `self.progress(...)` call" in stdout
    assert "#### One parent job for a group" in stdout
    assert "| Redis round trips per child event |" in stdout
    for row in result["runs"][0]["naive"]["idle"]:  # a Redis connection per client
        assert row["redis_pubsub"] >= row["established"]


def test_harness_runs_nchan(tmp_path: Path) -> None:
    nchan, why = find_nchan(install=False)
    if nchan is None:
        pytest.skip(f"Nchan not measured: {why} (`make bench` installs it)")
    stdout, result = run_quick(tmp_path, "nchan", "--no-worker-cost", "--no-group")
    check_server(result, "nchan")
    assert "| measure | Nchan |" in stdout


def test_harness_runs_ours_beside_a_baseline_commit(tmp_path: Path) -> None:
    args = ["--scenarios", "held", "--baseline", "HEAD", "--no-worker-cost", "--no-group"]
    stdout, result = run_quick(tmp_path, "ours", *args)
    for name in ("ours", "baseline"):
        rows = result["runs"][0][name]["held"]
        assert "error" not in rows, rows
        assert all(row["delivered"] == row["expected"] > 0 for row in rows)
    assert "`baseline`: ours as of commit HEAD (" in stdout
    assert "| idle streams held | live deliveries | ours | ours, baseline |" in stdout
