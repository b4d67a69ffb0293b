"""Processes starting together (API replicas, two schedulers, on Kubernetes) each bring
the schema to the newest revision; on PostgreSQL they take turns (an advisory lock),
else the second's CREATE TABLE fails on the first's table."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from scheduler.db.engine import create_tables, make_engine

ADMIN_URL = os.environ.get("RENDERFARM_TEST_DATABASE_URL", "")


@pytest.fixture
def fresh_database() -> Iterator[str]:
    if not ADMIN_URL.startswith("postgresql"):
        pytest.skip("PostgreSQL only: set RENDERFARM_TEST_DATABASE_URL")
    name = f"fresh_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def test_processes_starting_together_upgrade_the_schema_one_at_a_time(fresh_database: str) -> None:
    engines = [make_engine(fresh_database) for _ in range(4)]
    start = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def upgrade(index: int) -> None:
        start.wait()
        try:
            create_tables(engines[index])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=upgrade, args=(i,)) for i in range(len(engines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert {"jobs", "chunks", "nodes"} <= set(inspect(engines[0]).get_table_names())
    for engine in engines:
        engine.dispose()
