"""The reference deployment's web app: `uvicorn app.main:create_app_from_env --factory`.

Settings from the environment, the Celery and ARQ runners, and the library's app.
"""

from __future__ import annotations

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
    return create_app(settings, runners=runners)
