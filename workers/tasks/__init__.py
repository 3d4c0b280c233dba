"""Task code: the demo tasks (`demo.report`, `demo.fail`), loaded only by workers.

`report` holds their steps and the CSV as pure Python, shared by the Celery tasks of
`demo` and (later) the ARQ ones.
"""
