"""The screening engine (readers, algorithms, orchestration) and, later, its Celery app."""
