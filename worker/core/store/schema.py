"""The record store's tables (SQLAlchemy Core, one definition for SQLite and PostgreSQL) and their migrations.

Times are seconds since the epoch as double precision (PostgreSQL's ``REAL`` is single precision: an epoch
time would lose minutes). JSON documents (options, uploads, validation, error, report) are text written and
read by the pydantic models of :mod:`schemas`, so both databases hold the same bytes.

Migrations are a numbered list applied in order under a lock, each recorded in ``schema_version``: a small
versioned table rather than alembic, whose script folder, ``env.py`` and ini file would outweigh the handful
of steps one service's tables need, and which would have to run in every process that opens the store.
Migration 1 creates the tables of the first release with ``IF NOT EXISTS``, so a SQLite file made before
migrations existed is adopted as version 1.
"""

from collections.abc import Callable

from sqlalchemy import Column, Connection, Double, Index, Integer, MetaData, String, Table, Text, inspect, select, text

metadata = MetaData()

scans = Table(
    "scans", metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("stage", String(64)),
    Column("progress", Double, nullable=False, server_default="0"),
    Column("options", Text, nullable=False),
    Column("uploads", Text, nullable=False),
    Column("idempotency_key", String(200)),
    Column("created_at", Double, nullable=False),
    Column("dispatched_at", Double),
    Column("started_at", Double),
    Column("ended_at", Double),
    Column("heartbeat_at", Double),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("validation", Text),
    Column("error", Text),
    Column("report", Text),
    Column("deleted_at", Double),
)
Index("scans_idempotency", scans.c.owner, scans.c.idempotency_key, unique=True)
Index("scans_owner_created", scans.c.owner, scans.c.created_at)
Index("scans_state", scans.c.state)

scan_blobs = Table("scan_blobs", metadata, Column("scan_id", String(64), nullable=False),
                   Column("sha256", String(64), nullable=False))
Index("scan_blobs_scan", scan_blobs.c.scan_id)
Index("scan_blobs_sha", scan_blobs.c.sha256)

stage_durations = Table("stage_durations", metadata, Column("scan_id", String(64), nullable=False),
                        Column("stage", String(64), nullable=False), Column("seconds", Double, nullable=False))
counters = Table("counters", metadata, Column("name", String(64), primary_key=True),
                 Column("value", Double, nullable=False))
api_keys = Table("api_keys", metadata, Column("name", String(200), primary_key=True),
                 Column("hash", String(64), nullable=False, unique=True), Column("created_at", Double, nullable=False))
#: One row per worker main process, refreshed every heartbeat (worker.core.presence).
workers = Table("workers", metadata, Column("name", String(255), primary_key=True),
                Column("queues", String(64), nullable=False), Column("pid", Integer, nullable=False),
                Column("host", String(255), nullable=False), Column("beat_at", Double, nullable=False))

schema_version = Table("schema_version", MetaData(), Column("version", Integer, primary_key=True),
                       Column("applied_at", Double, nullable=False))

_FIRST_RELEASE = (scans, scan_blobs, stage_durations, counters, api_keys)


def _create(*tables: Table) -> Callable[[Connection], None]:
    def step(connection: Connection) -> None:
        metadata.create_all(connection, tables=list(tables), checkfirst=True)
    return step


#: (version, what it does, the step); append only, never edit a released step.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "scans, scan_blobs, stage_durations, counters, api_keys", _create(*_FIRST_RELEASE)),
    (2, "workers: worker heartbeats", _create(workers)),
]


def migrate(connection: Connection, now: float) -> list[int]:
    """Apply the missing migrations inside the caller's transaction; returns the versions applied.

    The caller holds the database's write lock (SQLite ``BEGIN IMMEDIATE``) or, on PostgreSQL, the
    transaction-level advisory lock taken here, so processes starting together migrate once."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(722013)"))  # any constant: ours
    schema_version.create(connection, checkfirst=True)
    done = set(connection.execute(select(schema_version.c.version)).scalars())
    applied = []
    for version, _what, step in MIGRATIONS:
        if version not in done:
            step(connection)
            connection.execute(schema_version.insert().values(version=version, applied_at=now))
            applied.append(version)
    return applied


def current_version(connection: Connection) -> int:
    if not inspect(connection).has_table("schema_version"):
        return 0
    return connection.execute(select(schema_version.c.version).order_by(schema_version.c.version.desc())
                              .limit(1)).scalar() or 0
