"""The Celery app of bdscreen: ``celery -A worker.core.celery_app worker -Q <prefix>.gpu`` (or ``bdscreen worker``).

The gateway imports this module to send tasks by name; it does not import :mod:`worker.tasks` (and so
never imports torch): only a worker loads the ``include`` list.
"""

from celery import Celery

app = Celery("bdscreen", include=["worker.tasks"])
app.config_from_object("worker.core.celeryconfig")

import worker.core.presence  # noqa: E402,F401 - connects the heartbeat of every worker to Celery's signals
