"""SQL engines for the services' metadata: SQLite (the embedded default) set up for safe concurrent writes, or any
SQLAlchemy URL (PostgreSQL in a cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import event


def open_engine(url: str, metadata: sa.MetaData) -> sa.Engine:
    """An engine on `url` with the tables of `metadata` created if missing."""
    is_sqlite = url.startswith("sqlite")
    engine = sa.create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30} if is_sqlite else {}, pool_pre_ping=not is_sqlite
    )
    if is_sqlite:
        _sqlite_setup(engine)
    metadata.create_all(engine)
    return engine


class SqlStore:
    """A service's metadata store: one engine, transactions, and the health check's ping."""

    def __init__(self, url: str, metadata: sa.MetaData):
        self.engine = open_engine(url, metadata)

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_setup(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # IMMEDIATE takes the write lock up front: concurrent writers wait (busy_timeout) instead of
        # failing with "database is locked" when a read transaction tries to upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
