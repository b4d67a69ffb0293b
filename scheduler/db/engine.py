"""The engine: any SQLAlchemy URL; SQLite tuned for several writer processes.

The schema is Alembic's (scheduler/db/migrations): ``create_tables`` upgrades any
database, empty or older, to the newest revision. After changing a table, add a
revision: ``alembic -c scheduler/db/alembic.ini revision --autogenerate -m "..."``.

SQLite gets WAL, ``synchronous=NORMAL``, a 5 s busy timeout and ``BEGIN IMMEDIATE``
transactions: a deferred transaction that reads and then writes can fail at once with
"database is locked" while another process writes (the busy handler is not used for
that upgrade), so every transaction takes the write lock up front. Readers are never
blocked in WAL mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlmodel import create_engine

from scheduler.db import tables  # noqa: F401  (registers the tables on the metadata)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def create_tables(engine: Engine) -> None:
    """Bring the schema to the newest revision (Alembic); safe to call at every start."""
    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), "head")
        connection.commit()
