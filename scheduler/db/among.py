"""``among(column, name)``: the column's value is one of a list given when the statement
runs (``session.execute(statement, {name: [...]})``), in one statement text whatever the
list's length, on each database.

SQLite: ``column IN (...)``, an expanding parameter (it has no arrays). PostgreSQL:
``column = ANY(%(name)s)``, one array parameter. An IN list is a new statement text
for each length, which the server parses and plans afresh and psycopg never prepares,
and the scheduler asks for hundreds of chunks, jobs and nodes by id or name each turn.

A statement built with it is a constant like any other: compiled once per database
and cached by SQLAlchemy (the construct has a cache key: its two forms).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ARRAY, any_, bindparam
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.sqltypes import BOOLEANTYPE
from sqlalchemy.sql.visitors import InternalTraversal


class Among(ColumnElement[bool]):
    """See the module's docstring; build it with ``among``."""

    inherit_cache = True
    type = BOOLEANTYPE
    _is_implicitly_boolean = True  # a comparison: no "= 1" after it where there is no bool
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's attribute, typed as a list)
        ("listed", InternalTraversal.dp_clauseelement),
        ("arrayed", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.listed = column.in_(bindparam(name, expanding=True))
        self.arrayed = column == any_(bindparam(name, type_=ARRAY(column.type)))

    @property
    def _from_objects(self) -> list[Any]:  # its column's table, as IN's would be
        return list(self.listed._from_objects)


def among(column: Any, name: str) -> Among:
    """``column`` is one of the list passed as ``name`` (see the module's docstring)."""
    return Among(column, name)


@compiles(Among)
def _listed(element: Among, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.listed, **kw))


@compiles(Among, "postgresql")
def _arrayed(element: Among, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.arrayed, **kw))
