"""The torch engine: readers and writers at the edges (``formats``), one canonical model in between, detectors
(``detect``) and repair (``repair``) as small modules behind narrow interfaces, and the scan that orchestrates them
(``scan``). Runs in-process (CLI, tests) and in Celery workers alike."""
