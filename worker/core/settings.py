"""The one settings object of a deployment: the gateway, the workers and ``bdscreen serve`` read the same.

Every field comes from an environment variable ``BDSCREEN_<FIELD>`` (upper case), or its default, read by
pydantic-settings; command-line flags come in as overrides. The object refuses unsafe or inconsistent values when
it is built, so a process fails at start-up rather than serving in open mode on a public address. It is
torch-free: the gateway imports it.
"""

import ipaddress
import re
from enum import StrEnum
from pathlib import Path

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "BDSCREEN_"
#: The queue kinds: ``gpu`` runs scans; ``cpu`` runs upload checks and webhooks. A deployment needs a live
#: worker on each (see worker.core.presence).
QUEUE_KINDS = ("gpu", "cpu")
BROKER_SCHEMES = ("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://", "filesystem://")


class AuthMode(StrEnum):
    #: Every request must carry an API key; each key sees only its own scans.
    keys = "keys"
    #: No keys: every caller is "local" and sees every scan. Refused on a non-loopback address.
    open = "open"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False)

    storage: Path = Field(default=Path.home() / ".local/share/bdscreen",
                          description="Uploads, artifacts, scan records and the embedded broker's folders; "
                                      "a shared volume when the gateway and the workers run on different machines.")
    broker: str | None = Field(default=None, description="Celery broker URL (redis://...); unset: the embedded "
                                                         "filesystem broker under the storage path.")
    database_url: str | None = Field(default=None, description="postgresql://USER@HOST:PORT/DB for the scan records; "
                                                               "unset: SQLite in <storage>/scans.db.")
    queue_prefix: str = Field(default="bdscreen", pattern=r"^[A-Za-z0-9._-]{1,64}$",
                              description="Queues are <prefix>.gpu and <prefix>.cpu; Redis keys start with it.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    auth: AuthMode | None = Field(default=None, description="keys or open; unset: open on loopback, else keys.")
    max_upload_mb: float = Field(default=1024, gt=0, description="Largest request body; larger answers 413.")
    validate_timeout: float = Field(default=30, ge=0, description="Seconds POST waits for the cpu-queue check.")
    scan_time_limit: float = Field(default=3600, gt=0, description="Soft limit of one scan, seconds; hard +60.")
    max_attempts: int = Field(default=3, ge=1, description="Starts of one scan before it fails as interrupted.")
    heartbeat_seconds: float = Field(default=5, gt=0, description="How often a running scan proves it is alive.")
    reconcile_seconds: float = Field(default=15, gt=0, description="How often lost scans are found and re-queued.")
    retention_days: float = Field(default=7, ge=0, description="Ended scans older than this are deleted; 0 keeps all.")
    webhook_secret: str | None = Field(default=None, description="HMAC key for webhooks; unset: a random one kept "
                                                                 "in <storage>/webhook-secret.")
    webhook_retries: int = Field(default=8, ge=0)
    callback_allow: str = Field(default="", description="Comma-separated hosts (name, *.suffix) and networks (CIDR) "
                                                        "a callback_url may reach besides public addresses; "
                                                        "loopback, private and link-local ones are refused else.")
    poll_interval: float = Field(default=0.02, gt=0, description="Polling interval of the embedded broker, seconds.")
    memory_budget_mb: float = Field(default=4096, gt=0, description="Bytes one step of a reader, data loader or "
                                    "batch may need, in MiB; estimated before allocating, refused (too-large) "
                                    "beyond it. Keep it well under a worker's RAM.")
    worker_address_space_mb: float = Field(default=16384, ge=0, description="RLIMIT_AS of each worker pool process "
                                           "on a CPU-only worker, in MiB (0: none), so an unforeseen bomb fails its "
                                           "scan instead of the machine; not set where CUDA is visible, since CUDA "
                                           "reserves far more address space than it uses.")

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> "Settings":
        if self.auth is None:
            self.auth = AuthMode.open if is_loopback(self.host) else AuthMode.keys
        elif self.auth == AuthMode.open and not is_loopback(self.host):
            raise ValueError(f"auth=open on host {self.host!r} would let anyone on the network read every scan; "
                             "set BDSCREEN_AUTH=keys and create keys with 'bdscreen keys create NAME', or bind to "
                             "127.0.0.1.")
        self.callback_allow_list()  # refuses a malformed entry at start-up
        if self.broker is not None and not self.broker.startswith(BROKER_SCHEMES):
            raise ValueError(f"broker {self.broker!r} is not supported: use redis://HOST:PORT/DB or "
                             "amqp://USER:PASSWORD@HOST:PORT/VHOST (RabbitMQ), or leave BDSCREEN_BROKER unset for "
                             "the embedded broker.")
        postgres = ("postgresql://", "postgres://", "postgresql+psycopg://")
        if self.database_url is not None and not self.database_url.startswith(postgres):
            raise ValueError(f"database_url {self.database_url!r} is not supported: use "
                             "postgresql://USER@HOST:PORT/DB, or leave BDSCREEN_DATABASE_URL unset for SQLite "
                             "under the storage path.")
        return self

    @property
    def embedded_broker(self) -> bool:
        return self.broker is None or self.broker.startswith("filesystem://")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def worker_lease_seconds(self) -> float:
        """A worker whose heartbeat row is older than this is taken to be gone (``/readyz``, POST).

        At least 10 s: on a loaded machine a heartbeat thread can miss a beat or two, and a queue wrongly
        reported empty turns uploads away."""
        return max(4 * self.heartbeat_seconds, 10.0)

    @property
    def lease_seconds(self) -> float:
        """A running scan whose heartbeat is older than this is taken to be lost."""
        return max(4 * self.heartbeat_seconds, 2.0)

    def callback_allow_list(self) -> tuple[tuple[str, ...], tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
        """The allow-list as (host names, lower case; networks)."""
        names, networks = [], []
        for entry in (e.strip() for e in self.callback_allow.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not re.fullmatch(r"(\*\.)?[A-Za-z0-9.-]+", entry):
                    raise ValueError(f"callback_allow entry {entry!r} is neither a host name, *.suffix nor a "
                                     "network such as 10.0.0.0/8") from None
                names.append(entry.lower())
        return tuple(names), tuple(networks)

    def queue(self, kind: str) -> str:
        return f"{self.queue_prefix}.{kind}"

    def to_env(self) -> dict[str, str]:
        """The environment variables that rebuild these settings in a child process."""
        values = self.model_dump(mode="json", exclude_none=True)
        return {f"{ENV_PREFIX}{name.upper()}": str(value) for name, value in values.items()}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(**overrides: object) -> Settings:
    """The settings from ``BDSCREEN_*`` variables, with ``overrides`` (flags) on top; exits naming every bad value."""
    try:
        return Settings(**{name: value for name, value in overrides.items() if value is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper() or 'SETTINGS'}: {e['msg']}"
                             for e in exc.errors())
        raise SystemExit(f"bdscreen: bad settings: {problems}") from None


_current: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, read once (or those :func:`use_settings` installed)."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def use_settings(settings: Settings | None) -> None:
    """Make ``settings`` the process's settings (None: read the environment again on next use)."""
    global _current
    _current = settings
