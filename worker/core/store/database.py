"""The record store's database connection: SQLite on the storage path (the embedded default) or PostgreSQL.

``BDSCREEN_DATABASE_URL=postgresql://USER@HOST:PORT/DB`` puts the records on PostgreSQL (driven by psycopg 3
through SQLAlchemy), for deployments whose gateway and workers run on several machines: SQLite's own
documentation warns against sharing one database file over a network filesystem. Unset, the records live in
``<storage>/scans.db`` (WAL), and no other server is needed.

On SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock at once, so two
read-then-write transactions cannot deadlock on lock upgrade, and the busy timeout applies); reads run
outside transactions, as WAL allows. Connections are not carried across ``fork`` (Celery's prefork pool):
a forked child drops the pool it inherited and opens its own.
"""

import os
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.engine.url import make_url

from worker.core.store.schema import migrate

_READ = "bdscreen_read"
_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def database_url(storage: Path, configured: str | None) -> str:
    """The SQLAlchemy URL: the configured PostgreSQL one (with the psycopg 3 driver), else SQLite on storage."""
    if configured is None:
        return f"sqlite:///{storage / 'scans.db'}"
    url = make_url(configured)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            # Every use ends in an explicit commit or rollback, so the pool need not reset connections again.
            self.engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                                        pool_reset_on_return=None)
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                                        pool_reset_on_return=None)
        _engines.add(self.engine)
        with self.transaction() as connection:
            migrate(connection, time.time())

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction, committed at the end of the block, rolled back on an exception."""
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """Reads; on SQLite outside any transaction (each statement sees the latest commit)."""
        with self.engine.connect() as connection:
            connection.execution_options(**{_READ: True})
            yield connection
            connection.rollback()

    def dispose(self) -> None:
        self.engine.dispose()


def upsert(connection: Connection, table: Table, row: dict, keys: list[str], updates: dict):
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET updates`` in the connection's dialect."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).values(**row).on_conflict_do_update(index_elements=keys, set_=updates)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table).values(**row).on_conflict_do_update(index_elements=keys, set_=updates)


def _sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's begin event below decides when a transaction starts
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    if not connection.get_execution_options().get(_READ):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _forget_inherited_connections() -> None:
    for engine in list(_engines):
        engine.dispose(close=False)  # the parent keeps using them; the child opens its own


os.register_at_fork(after_in_child=_forget_inherited_connections)
