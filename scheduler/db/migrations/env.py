"""Alembic environment: runs on the connection ``create_tables`` hands over, or, from the
``alembic`` command line, on ``RENDERFARM_DATABASE_URL``."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from scheduler.db import tables  # noqa: F401  (registers the tables on the metadata)


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Processes starting together (api, scheduler) migrate one at a time.
            context.execute("SELECT pg_advisory_xact_lock(7271100)")
        context.run_migrations()


handed_over = context.config.attributes.get("connection")
if handed_over is not None:
    run(handed_over)
else:
    from scheduler.db.engine import make_engine
    from scheduler.settings import Settings

    with make_engine(Settings().effective_database_url).connect() as connection:
        run(connection)
        connection.commit()
