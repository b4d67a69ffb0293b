"""The engine: any SQLAlchemy URL; SQLite tuned for many threads and several processes.

The schema is Alembic's (scheduler/db/migrations): ``create_tables`` upgrades any
database, empty or older, to the newest revision. After changing a table, add a
revision: ``alembic -c scheduler/db/alembic.ini revision --autogenerate -m "..."``.

SQLite gets WAL and ``synchronous=NORMAL``, and two kinds of transaction:

- a *writing* transaction (the default) begins ``BEGIN IMMEDIATE``: a deferred
  transaction that reads and then writes can fail at once with "database is locked"
  while another process writes (the busy handler is not used for that upgrade), so a
  writer takes the write lock up front. One writer at a time, so the wait for the
  lock is retried with backoff for up to ``WRITE_LOCK_WAIT`` seconds, never
  surfaced sooner: writes are short, a queue of them drains;
- a *reading* transaction, on ``read_only(engine)``, begins deferred (plain ``BEGIN``):
  in WAL mode it reads one snapshot alongside the writer and never waits for, nor
  holds up, the write lock. It must not write: SQLite would refuse the upgrade.

On PostgreSQL both are ordinary transactions.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlmodel import Session, create_engine

from scheduler.db import tables  # noqa: F401  (registers the tables on the metadata)
from scheduler.errors import Misconfigured, Unavailable

if TYPE_CHECKING:
    from scheduler.settings import Settings

log = logging.getLogger(__name__)

READ_ONLY = "renderfarm_read_only"  # the execution option of ``read_only(engine)``
WRITE_LOCK_WAIT = 60.0  # seconds a writer waits for SQLite's write lock, all tries together
BUSY_TIMEOUT_MS = 10_000  # SQLite's own wait within one try (reads rarely need any)
MIGRATION_LOCK = 0x72656E646572  # PostgreSQL advisory lock key of schema upgrades ("render")


def farm_engine(settings: Settings, name: str) -> Engine:
    """The engine of a farm process: its database, its bounded pool, and its name as
    PostgreSQL shows it (``pg_stat_activity.application_name``)."""
    return make_engine(
        settings.effective_database_url, settings.db_pool_size, settings.db_max_overflow, name
    )


def make_engine(
    url: str, pool_size: int = 10, max_overflow: int = 10, name: str = "renderfarm"
) -> Engine:
    """The engine of a database URL; ``Misconfigured`` where the URL cannot work (not a
    URL, a database kind SQLAlchemy does not know, a driver that is not installed).

    PostgreSQL: at most ``pool_size + max_overflow`` connections (a caller past them
    waits up to 30 s for one, then fails); each checked before use, so a server that
    restarted costs one failed check per stale connection, not a failed request."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise Misconfigured(  # not echoed: a malformed URL may still hold a password
            "RENDERFARM_DATABASE_URL is not a database URL: give sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DATABASE"
        ) from None
    try:
        if parsed.get_backend_name() == "postgresql":
            return create_engine(
                url,
                pool_pre_ping=True,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=30,
                pool_recycle=1800,  # under a proxy or PgBouncer that ends idle ones
                connect_args={"application_name": name[:63]},
            )
        if parsed.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        return _sqlite_engine(url, parsed.database)
    except NoSuchModuleError:
        raise Misconfigured(
            f"RENDERFARM_DATABASE_URL: SQLAlchemy knows no database kind "
            f"{parsed.drivername!r}; give sqlite:///PATH or postgresql+psycopg://..."
        ) from None
    except ImportError as error:
        raise Misconfigured(
            f"RENDERFARM_DATABASE_URL {safe_url(url)} needs the Python driver "
            f"{error.name or error}, which is not installed (PostgreSQL: "
            "postgresql+psycopg://..., pip install 'renderfarm[postgres]')"
        ) from None


def safe_url(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(not a URL)"


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={
            "check_same_thread": False,
            "timeout": BUSY_TIMEOUT_MS / 1000,
            "isolation_level": None,
        },
        # A connection per API thread (AnyIO's 40): a thread waits for the write lock,
        # never for a connection, and a reader never queues behind writers for one.
        pool_size=20,
        max_overflow=30,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        raw = connection.connection.dbapi_connection
        if connection.get_execution_options().get(READ_ONLY):
            raw.execute("BEGIN")  # type: ignore[union-attr]
        else:
            begin_writing(raw)

    return engine


def read_only(engine: Engine) -> Engine:
    """``engine`` for transactions that only read (the same pool): on SQLite they begin
    deferred, so they never take or wait for the write lock. On PostgreSQL they run at
    REPEATABLE READ: all their statements see one snapshot (a job's state and its
    frames counted, read by two statements, agree even when the scheduler commits in
    between), and a transaction that only reads never fails for it."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(**{READ_ONLY: True}, isolation_level="REPEATABLE READ")
    return engine.execution_options(**{READ_ONLY: True})


def single_statements(engine: Engine) -> Engine:
    """``engine`` for reads made of one statement, which needs no transaction around it
    to see one snapshot: on PostgreSQL they run in autocommit (no BEGIN and ROLLBACK
    round trips); on SQLite as ``read_only`` (a deferred BEGIN costs nothing there, and
    the driver's isolation level must stay as ``make_engine`` set it)."""
    if engine.dialect.name == "sqlite":
        return read_only(engine)
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def reads_never_wait(engine: Engine) -> bool:
    """Whether a short read may run on an event loop, not in a thread: on SQLite in WAL
    mode a reader never waits for a lock (the writer appends to the WAL, checkpoints
    are passive) and a one-row read costs less than the hop to a thread and back. A
    read from a server waits for the network, so it goes to a thread."""
    return engine.dialect.name == "sqlite"


def begin_writing(dbapi_connection: Any, wait: float = WRITE_LOCK_WAIT) -> None:
    """``BEGIN IMMEDIATE``, tried again with jittered backoff while another connection
    holds the write lock, for up to ``wait`` seconds in all. Nothing ran in the
    transaction yet, so a try that meets "database is locked" is safe to repeat."""
    deadline = time.monotonic() + wait
    pause = 0.002
    while True:
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 0.05)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def insert_or(session: Session, table: Any) -> Any:
    """The database's own INSERT for ``table``, which takes ``on_conflict_do_nothing``
    and ``on_conflict_do_update`` (both SQLite and PostgreSQL have ON CONFLICT)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def create_tables(engine: Engine) -> None:
    """Bring the schema to the newest revision (Alembic); safe to call at every start.
    ``Unavailable`` where the database does not answer."""
    try:
        connection = engine.connect()
    except OperationalError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise Unavailable(
            f"cannot reach the database {safe_url(str(engine.url))}: {reason}"
        ) from None
    with connection:
        on_postgresql = connection.dialect.name == "postgresql"
        if on_postgresql:  # API replicas and schedulers starting together upgrade one at a time
            _take_migration_lock(connection)
        try:
            command.upgrade(alembic_config(connection), "head")
            connection.commit()
        finally:
            if on_postgresql:  # a broken connection ends its lock; the upgrade's error stands
                with contextlib.suppress(SQLAlchemyError):
                    connection.rollback()
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                    connection.commit()


def _take_migration_lock(connection: Connection) -> None:
    """The schema upgrade's advisory lock: at once, else after saying whom it waits for."""
    key = {"key": MIGRATION_LOCK}
    if not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
        log.info("waiting for another process's schema upgrade (advisory lock %d)", MIGRATION_LOCK)
        connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
    connection.commit()
