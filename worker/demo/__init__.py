"""The demo kit: the project's MNIST BadNet (:mod:`worker.demo.badnet`) and the README's first command
(``python -m worker.demo``, :mod:`worker.demo.run`), which scans it through a local service."""
