"""Real database servers for the tests: PostgreSQL on 127.0.0.1:5432 (started when it is not listening).

Each use makes its own database (``bdscreen_test_<random>``) and drops it afterwards, so parallel runs
and other engineers' databases on the same server never meet.
"""

import glob
import os
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def ensure_postgres() -> None:
    """Start the machine's PostgreSQL cluster (Debian's pg_ctlcluster) if nothing listens on 5432."""
    if listening(PG_PORT):
        return
    versions = sorted(os.path.basename(v) for v in glob.glob("/etc/postgresql/*"))
    if not versions:
        raise RuntimeError("PostgreSQL is not listening on 127.0.0.1:5432 and not installed "
                           "(apt-get install postgresql; .ci/run does this)")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"], check=True)
    for _ in range(100):
        if listening(PG_PORT):
            return
        time.sleep(0.1)
    raise RuntimeError("PostgreSQL did not start listening on 127.0.0.1:5432")


@contextmanager
def postgres_database():
    """A fresh, empty database on the local PostgreSQL; yields its postgresql:// URL, drops it at the end."""
    import psycopg

    ensure_postgres()
    name = f"bdscreen_test_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
