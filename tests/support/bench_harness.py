"""Running a benchmark module at its `--quick` size, as the harness tests do.

In a subprocess (a bench pins itself to a core and raises its open-files limit, which
must not leak into the test process), writing into a temporary docs file that must keep
what it held and gain the module's markers; returns its stdout and its results file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import ROOT

KEPT = "# Benchmarks\n\nKept as it is.\n"


def run_quick(
    module: str,
    tmp_path: Path,
    *extra: str,
    markers: tuple[str, str],
    results: str = "*.json",
    timeout: float,
) -> tuple[str, dict[str, Any]]:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(KEPT)
    args = ["--quick", "--docs", str(docs), "--results", str(tmp_path / "results"), *extra]
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = docs.read_text()
    assert text.startswith(KEPT)
    assert markers[0] in text and markers[1] in text
    (result_file,) = (tmp_path / "results").glob(results)
    return done.stdout, json.loads(result_file.read_text())
