"""The reference deployment's web app (`app/main.py`): the garbage collector it settles.

In a subprocess: `gc.freeze` and the thresholds are the whole process's, and must not
leak into the test process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from progress_streamer.protocol.settings import Settings
from tests.support import ROOT

PROBE = """
import gc, json
from app.main import FULL_COLLECTION_EVERY, create_app_from_env
before = gc.get_threshold()
create_app_from_env()
print(json.dumps({"before": before, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count(), "every": FULL_COLLECTION_EVERY}))
"""


def test_the_web_app_moves_what_it_built_out_of_the_collectors_sight(settings: Settings) -> None:
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "PROGRESS_AUTH": "none",
        "PROGRESS_KEY_PREFIX": settings.key_prefix,
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["frozen"] > 10_000  # the modules and the app: gone from every collection
    # Full collections need a hundred younger ones; the younger ones keep Python's pace.
    assert seen["after"] == [*seen["before"][:2], seen["every"]]
    assert seen["every"] > seen["before"][2]
