"""The reference deployment's workers: the Celery app (`workers.celery_app`), the ARQ
worker settings (`workers.arq_worker`) and the demo tasks (`workers.tasks`), each a few
lines on top of `progress_streamer`."""
