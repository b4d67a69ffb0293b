"""``among``: rows whose column is one of a list, in one statement text per database on
PostgreSQL whatever the list's length (run with RENDERFARM_TEST_DATABASE_URL for it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from scheduler.db import Studio
from scheduler.db.among import among

_NAMED = select(col(Studio.id)).where(among(col(Studio.name), "names")).order_by(col(Studio.id))


def test_among_finds_the_rows_listed_whatever_the_list_s_length(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all(Studio(name=name, created_at=0.0) for name in ("a", "b", "c", "d"))
        session.commit()
        statements: list[str] = []

        def record(_c: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", record)
        try:
            found = {
                length: list(session.scalars(_NAMED, {"names": ["a", "c", "x"][:length]}))
                for length in (0, 1, 3)
            }
            moved = session.execute(
                update(Studio).where(among(col(Studio.id), "ids")).values(weight=2.0),
                {"ids": [found[3][0]]},
            )
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert found[0] == [] and len(found[1]) == 1 and len(found[3]) == 2  # "x" is none
        assert moved.rowcount == 1
        reads = statements[:3]
        if engine.dialect.name == "postgresql":
            assert len(set(reads)) == 1, reads  # one text, to parse and plan once
            assert "= ANY" in reads[0]
        else:  # SQLite has no arrays: an IN list, one text per length
            assert len(set(reads)) == 3 and all(" IN (" in text for text in reads), reads
