"""Workers and the protocol they share with the web app.

The modules `status`, `event`, `keys`, `scripts`, `publisher`, `throttle`, `history`,
`settings` and `catalog` import neither Celery, ARQ nor Starlette: the web app (`app/`)
imports them too. Celery lives in `celery_*` modules, ARQ in `arq_*` modules.
"""
