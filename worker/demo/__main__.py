"""``python -m worker.demo``: the README's first command (see :mod:`worker.demo.run`)."""

from worker.demo.run import main

raise SystemExit(main())
