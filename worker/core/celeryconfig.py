"""Celery configuration, loaded by module name (``app.config_from_object("worker.core.celeryconfig")``).

Everything comes from :class:`worker.core.settings.Settings`: the broker (Redis, or the embedded filesystem
broker under the storage path), the two queues, declared once here in ``task_routes`` (``<prefix>.gpu`` for
scans, ``<prefix>.cpu`` for upload checks and webhooks), and the reliability settings of long tasks:
``acks_late`` with ``reject_on_worker_lost`` and a prefetch of one. No result backend: a task's outcome is
written to the scan record, which clients read through the gateway.
"""

from kombu import Exchange, Queue

from worker.core import embedded_broker as _embedded_broker
from worker.core.settings import QUEUE_KINDS, get_settings

_settings = get_settings()
_broker_dir = _settings.storage / "broker"

if _settings.embedded_broker:  # the folders are made by worker.core.store.open_store
    broker_url = "filesystem://"
    # kombu's filesystem transport with an atomic put (see worker.core.embedded_broker); processed/ is on the same
    # filesystem as queue/, so taking a message is an atomic rename and two workers never take the same one.
    # Store.sweep_leftovers empties processed/.
    broker_transport = "worker.core.embedded_broker:Transport"
    broker_transport_options = _embedded_broker.transport_options(_broker_dir, _settings.poll_interval)
    worker_enable_remote_control = False
elif _settings.broker.startswith(("redis://", "rediss://")):
    broker_url = _settings.broker
    broker_transport_options = {
        "global_keyprefix": f"{_settings.queue_prefix}:",
        # A message not acked within this is given to another worker: longer than a scan may run.
        "visibility_timeout": int(_settings.scan_time_limit + 300),
    }
else:  # RabbitMQ (amqp://): unacked messages go back to the queue when the worker's connection closes
    broker_url = _settings.broker
    # Ask RabbitMQ (3.12+) to let a consumer hold an unacked scan for longer than a scan may run; the
    # server-wide default consumer_timeout (30 min) would otherwise close the channel of a long scan.
    _consumer_timeout_ms = int((_settings.scan_time_limit + 300) * 1000)
    task_queues = [Queue(_settings.queue(kind), Exchange(_settings.queue(kind)), routing_key=_settings.queue(kind),
                         queue_arguments={"x-consumer-timeout": _consumer_timeout_ms}) for kind in QUEUE_KINDS]
broker_connection_retry_on_startup = True
broker_connection_timeout = 5

task_routes = {
    "bdscreen.scan": {"queue": _settings.queue("gpu")},
    "bdscreen.validate": {"queue": _settings.queue("cpu")},
    "bdscreen.notify": {"queue": _settings.queue("cpu")},
}
task_default_queue = _settings.queue("cpu")

task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
task_acks_late = True
task_reject_on_worker_lost = True
task_track_started = False
worker_prefetch_multiplier = 1
# Pool processes import torch and the engine when they start (worker.tasks._preload); on a loaded machine that
# takes longer than Celery's default 4 s wait for a new pool process.
worker_proc_alive_timeout = 120
worker_hijack_root_logger = False
worker_send_task_events = False
