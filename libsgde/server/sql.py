"""SQL engines for the services' metadata: SQLite (the embedded default) set up for safe concurrent writes, or any
SQLAlchemy URL (PostgreSQL in a cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import event

from libsgde.errors import FailedPrecondition

# A server connection (PostgreSQL) per concurrent transaction, up to this many per process: two registry replicas
# take at most 64 of PostgreSQL's default 100. More callers wait for a free one (up to pool_timeout, 30 s).
POOL_SIZE = 8
POOL_OVERFLOW = 24
# An arbitrary constant: the key of the advisory lock under which replicas create the tables (see open_engine).
_SCHEMA_LOCK_KEY = 0x5D6E_0001


def open_engine(url: str, metadata: sa.MetaData) -> sa.Engine:
    """An engine on `url` with the tables of `metadata` created if missing."""
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_setup(engine)
        _sqlite_check(engine, url)
    else:
        # pre-ping: a connection the server closed meanwhile (a restart, a failover, an idle timeout) is replaced
        # before use instead of failing the caller's transaction
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together would each see a table missing and create it, and all but one fail on
            # the duplicate: they take turns (DDL is transactional in PostgreSQL; the lock ends with the commit).
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        metadata.create_all(conn)
    return engine


def db_clock(dialect: str) -> sa.ColumnElement:
    """The database server's time in seconds since the epoch, as SQL: one clock for every process that shares the
    database, however far their own clocks drift apart."""
    if dialect == "postgresql":
        return sa.func.extract("epoch", sa.func.clock_timestamp())
    if dialect == "sqlite":
        return (sa.func.julianday("now") - 2440587.5) * 86400.0
    raise ValueError(f"no clock for SQL dialect {dialect!r}: the services' metadata lives in SQLite or PostgreSQL")


def _sqlite_check(engine: sa.Engine, url: str) -> None:
    """Refuses to start on a damaged SQLite file (quick_check reads every page once; start-up is the time for it)."""
    try:
        with engine.connect() as conn:
            problems = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check").fetchmany(3)]
    except sa.exc.DatabaseError as e:
        problems = [str(e.orig)]
    if problems != ["ok"]:
        raise FailedPrecondition(
            f"the database {url} is damaged ({'; '.join(problems)[:300]}): restore it from a backup, or move it "
            "away to start empty"
        )


class SqlStore:
    """A service's metadata store: one engine, transactions, and the health check's ping."""

    def __init__(self, url: str, metadata: sa.MetaData):
        self.engine = open_engine(url, metadata)
        self._tables = metadata.sorted_tables

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    def ping(self) -> None:
        """Raises unless the database answers from its own tables: `SELECT 1` never reads them, and a corrupt SQLite
        file answered it while every real query failed."""
        with self.engine.connect() as conn:
            for table in self._tables:
                conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1))

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
