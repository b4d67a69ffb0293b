"""The Alembic revisions build exactly the schema the models declare."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from scheduler.db import create_tables

pytestmark = pytest.mark.integration


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []
        assert context.get_current_revision() is not None


def test_upgrading_again_changes_nothing(engine: Engine) -> None:
    before = sorted(inspect(engine).get_table_names())
    create_tables(engine)
    assert sorted(inspect(engine).get_table_names()) == before
    assert {"jobs", "chunks", "attempts", "frame_results", "nodes", "alembic_version"} <= set(
        before
    )
