"""The cluster benchmark's harness runs end to end at a tiny size (not the benchmark).

`bench.cluster --quick` in a subprocess (it pins itself to a core and raises its
open-files limit), writing into a temporary docs file: both modes deliver in the fan-out,
the publish cost and throughput have figures for every primary, and both re-routes
were timed. Skipped only without a redis-server >= 7.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cluster import BEGIN, END
from tests.support.bench_harness import run_quick
from tests.support.redis_cluster import cluster_unavailable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.skipif(cluster_unavailable() is not None, reason=str(cluster_unavailable())),
]


def test_the_cluster_harness_runs_at_a_tiny_size(tmp_path: Path) -> None:
    _, results = run_quick(
        "bench.cluster", tmp_path, markers=(BEGIN, END), results="cluster-*.json",
        timeout=240,  # typically 45 s (a primary killed and replaced); generous for CI
    )  # fmt: skip
    for mode, rounds in results["fanout"].items():
        for found in rounds:
            assert "error" not in found, (mode, found)
            for step in found["steps"]:
                assert step["lost"] == 0 and step["p99_ms"] is not None, (mode, step)
                assert step["script_calls"] >= step["published"] > 0, (mode, step)
    costs = results["costs"]
    assert all(len(row) == 3 and all(row) for row in costs["per_primary"])
    for mode, rounds in results["throughput"].items():
        for found in rounds:
            assert found["calls_per_s"] > 0
            assert all(r["calls"] > 0 for r in found["per_redis"]), (mode, found)
    for key in ("migrations", "kills"):
        figures = results["reroute"][key]
        assert isinstance(figures, list) and None not in figures, (key, figures)
