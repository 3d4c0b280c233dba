"""Task code: the demo tasks (`demo.report`, `demo.fail`), loaded only by workers.

`report` holds their steps and the CSV as pure Python, shared by the Celery tasks of
`celery_demo` and the ARQ jobs of `arq_demo`.
"""
