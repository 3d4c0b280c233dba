"""The reference deployment's web app: `uvicorn app.main:create_app_from_env --factory`.

Settings from the environment, the Celery and ARQ runners, and the library's app.
"""

from __future__ import annotations

import gc
import logging

from starlette.applications import Starlette

from progress_streamer.web import BoundedHttpToolsProtocol, JobRunner, Settings, create_app


def create_app_from_env() -> Starlette:
    settings = Settings.from_env()
    settings.check_web()
    # The Procfile's protocol reads its limits at the first connection; settle them now,
    # so a short open-files limit is raised (or reported) at start.
    BoundedHttpToolsProtocol.current_limits()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Imported only here: the web package itself never imports Celery, ARQ or task code.
    from progress_streamer.arq import ArqRunner
    from progress_streamer.celery import CeleryRunner

    runners: dict[str, JobRunner] = {
        "celery": CeleryRunner(settings),
        "arq": ArqRunner(settings),
    }
    app = create_app(settings, runners=runners)
    settle_the_collector()
    return app


# Full collections come at most once per this many younger (generation 1) ones, instead
# of Python's 10: a process holding 10,000 streams takes 0.3-0.5 s for one, and while
# thousands of clients (re)connect at once, a deploy's, the default set off seven.
FULL_COLLECTION_EVERY = 100


def settle_the_collector() -> None:
    """Python's garbage collector for a process that holds thousands of streams.

    Every open stream waits while a full collection walks every object the process holds
    (docs/scaling.md, "Python's full garbage collections"). Two things shorten and space
    those pauses: what was built at start (modules, the app) is moved out of the
    collector's sight (`gc.freeze`: it lives as long as the process), and a full
    collection needs a hundred younger ones before it (the quarter-of-all rule still
    applies on top). Cyclic garbage waits longer for it: the streams leave none
    (tests/web/test_app.py).
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
