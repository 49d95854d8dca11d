"""bdscreen's back end, in four packages by role, and the Celery tasks that join them.

- :mod:`worker.core`: torch-free parts the gateway and the workers share: settings, errors and limits, content
  sniffing, the record and blob store, the Celery app, webhooks, the reconcile loop, litmus bank files. Imports
  only the standard library, ``schemas`` and light third-party packages; the gateway imports nothing else.
- :mod:`worker.engine`: the torch engine: format readers and writers, data and preprocessing, the canonical
  model, the detectors, the repair, and one scan (:func:`worker.engine.scan.run_scan`). Imports ``core``.
- :mod:`worker.zoo`: offline bank building: model zoos, attacks, ULP training. Imports ``engine`` and ``core``;
  nothing that scans imports it.
- :mod:`worker.demo`: the demo kit behind the README's first command. May import anything.
- :mod:`worker.tasks` and :mod:`worker.jobs`: the Celery tasks (thin) and their work; they run only in worker
  processes and import the engine lazily, after the pool forks.
"""
