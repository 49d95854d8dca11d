"""``bdscreen serve`` (the gateway and its workers on one machine) and ``bdscreen worker`` (scale out).

``serve`` needs no Redis and no Docker: without ``--broker`` the queue is kombu's filesystem transport under
the storage path (worker.core.embedded_broker). It starts one worker process for each queue (``gpu``: scans, one
pool process per GPU or one on a CPU machine; ``cpu``: upload checks and webhooks), restarts a worker that
dies (cli.supervise), runs the gateway with uvicorn in this process, and stops the workers when it stops.
With ``--broker redis://...`` or ``amqp://...`` on several machines sharing the storage path (and
``BDSCREEN_DATABASE_URL`` on PostgreSQL), run ``bdscreen serve --no-worker`` (or uvicorn) once and
``bdscreen worker`` wherever there is a GPU.
"""

import argparse
import glob
import os
import signal
import subprocess
import sys

from cli.supervise import SupervisedWorker, Supervisor
from worker.core.settings import Settings, get_settings, load_settings, use_settings

QUEUES = ("gpu", "cpu")


def add_service_parsers(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the REST gateway and its workers on this machine",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; BDSCREEN_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; BDSCREEN_PORT)")
    serve.add_argument("--auth", choices=["open", "keys"], help="default: open on loopback, keys elsewhere")
    serve.add_argument("--no-worker", action="store_true", help="run the gateway only")
    serve.set_defaults(run=run_serve)

    worker = commands.add_parser("worker", help="run a Celery worker for the gpu and/or cpu queue")
    _common(worker)
    worker.add_argument("--queues", default="gpu", help="comma-separated: gpu (scans), cpu (upload checks, "
                                                         "webhooks) (default: gpu)")
    worker.add_argument("--concurrency", type=int, help="pool processes (default: one per GPU, else 1; cpu: 2)")
    worker.set_defaults(run=run_worker)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="storage path shared by gateway and workers (BDSCREEN_STORAGE)")
    parser.add_argument("--broker", help="redis://HOST:PORT/DB or amqp://USER:PASS@HOST:PORT/VHOST; default: the "
                                         "embedded broker (BDSCREEN_BROKER)")


def apply_settings(args: argparse.Namespace) -> Settings:
    """Command-line values override ``BDSCREEN_*`` variables for this process; exits on bad settings.

    Child processes get the result through :func:`child_env`, never through this process's environment."""
    settings = load_settings(**{name: getattr(args, name, None) for name in ("storage", "broker", "host", "port",
                                                                             "auth")})
    use_settings(settings)
    return settings


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a child process: ours, with every setting of ``settings`` spelled out."""
    return {**os.environ, **settings.to_env()}


def _die_with_parent() -> None:
    """In a child: receive SIGTERM when the parent dies, so no worker outlives ``serve`` (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = apply_settings(args)
    workers = []
    if not args.no_worker:
        for queue in QUEUES:
            command = [sys.executable, "-m", "cli.main", "worker", "--queues", queue]
            # Own sessions: a Ctrl-C or a signal to serve's group reaches only serve, which then stops each
            # worker's main process, which stops its pool (signalling pool processes directly can hang it).
            workers.append(SupervisedWorker(queue, lambda command=command: subprocess.Popen(
                command, env=child_env(settings), preexec_fn=_die_with_parent, start_new_session=True)))
    supervisor = Supervisor(workers)
    supervisor.start()
    broker = "embedded filesystem broker" if settings.embedded_broker else settings.broker
    print(f"bdscreen: gateway on http://{settings.host}:{settings.port} (auth {settings.auth.value}), "
          f"storage {settings.storage}, {broker}, {len(workers)} supervised worker process(es)", file=sys.stderr)
    # uvicorn re-raises the SIGTERM it shut down on; as an exception it lets the workers be stopped below.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        uvicorn.run("service.main:app", host=settings.host, port=settings.port, log_level="warning")
    finally:
        supervisor.stop()
    return 0


def _raise_system_exit(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def gpu_count() -> int:
    """GPUs visible to this process, without importing torch (which the parent must not bind to CUDA)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def worker_argv(queues: list[str], concurrency: int | None) -> list[str]:
    settings = get_settings()
    if concurrency is None:
        concurrency = max(gpu_count(), 1) if "gpu" in queues else 2
    argv = ["worker", "-Q", ",".join(settings.queue(q) for q in queues), "-c", str(concurrency),
            "-n", f"{'+'.join(queues)}-{os.getpid()}@%h", "--prefetch-multiplier", "1",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    if settings.embedded_broker:
        argv.append("--without-heartbeat")
    return argv


def run_worker(args: argparse.Namespace) -> int:
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        print(f"bdscreen: bad-option: unknown queue(s) {unknown}; the queues are gpu and cpu.", file=sys.stderr)
        return 2
    apply_settings(args)
    from worker.core.celery_app import app
    from worker.core.store import store_for

    store_for(get_settings())  # the storage folders, the embedded broker's among them

    app.worker_main(worker_argv(queues, args.concurrency))
    return 0
