"""Loaded by Python at start (this folder first on PYTHONPATH) in `bench.garbage`'s web
process: records every garbage collection, and on SIGUSR1 appends to `$BENCH_GC_OUT`
one JSON line: the collections since the last report, the objects the collector tracks,
and a full collection run now (what it found unreachable, and how long it took).

Only in the web process (its command names `create_app_from_env`); a probe, not part of
the product: `bench.garbage` puts this folder on the path of the servers it starts.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from typing import Any

if any("create_app_from_env" in arg for arg in sys.argv) and os.environ.get("BENCH_GC_OUT"):
    _collections: list[tuple[int, float]] = []
    _started = [0.0]

    def _timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
        else:
            _collections.append((info["generation"], time.perf_counter() - _started[0]))

    def _report(*_: object) -> None:
        full = [seconds for generation, seconds in _collections if generation == 2]
        line = {
            "full_collections": len(full),
            "full_total_ms": 1e3 * sum(full),
            "full_max_ms": 1e3 * max(full, default=0.0),
            "tracked": len(gc.get_objects()),
        }
        started = time.perf_counter()
        line["unreachable"] = gc.collect()
        line["full_now_ms"] = 1e3 * (time.perf_counter() - started)
        _collections.clear()
        with open(os.environ["BENCH_GC_OUT"], "a") as out:
            out.write(json.dumps(line) + "\n")

    gc.callbacks.append(_timed)
    signal.signal(signal.SIGUSR1, _report)
