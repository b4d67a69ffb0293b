"""Every state change of a chunk, an attempt or a job goes through the state writers
(scheduler/db/transitions.py), which check the transition tables of the core: no other
module builds an UPDATE of those tables (with SQLAlchemy or as SQL text), or assigns
``.state`` on a row (a node's own state is not a state machine of the core)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from scheduler.core.states import (
    ATTEMPT_TRANSITIONS,
    CHUNK_TRANSITIONS,
    JOB_TRANSITIONS,
    AttemptState,
    ChunkState,
    JobState,
    sources_of,
)
from scheduler.db.transitions import IllegalTransition, move_chunks

ROOT = Path(__file__).resolve().parents[2]
WRITERS = ROOT / "scheduler" / "db" / "transitions.py"
ENTITIES = {"ChunkRow", "AttemptRow", "JobRow", "_CHUNKS", "_ATTEMPTS", "_JOBS"}


def _sources() -> list[Path]:
    found = []
    for top in ("scheduler", "api", "workers"):
        found += [
            p for p in (ROOT / top).rglob("*.py") if "migrations" not in p.parts and p != WRITERS
        ]
    return sorted(found)


def _state_writes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        # update(ChunkRow), ChunkRow.__table__.update()
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "update" and node.args:
                target = node.args[0]
                if isinstance(target, ast.Name) and target.id in ENTITIES:
                    found.append(f"line {node.lineno}: update({target.id})")
            if isinstance(func, ast.Attribute) and func.attr == "update":
                inner = func.value
                if (
                    isinstance(inner, ast.Attribute)
                    and inner.attr == "__table__"
                    and isinstance(inner.value, ast.Name)
                    and inner.value.id in ENTITIES
                ):
                    found.append(f"line {node.lineno}: {inner.value.id}.__table__.update()")
        # raw SQL: text("UPDATE chunks SET state = ...")
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.search(r"\bupdate\s+(chunks|attempts|jobs)\b", node.value, re.IGNORECASE)
        ):
            found.append(f"line {node.lineno}: SQL {node.value[:40]!r}")
        # job.state = ..., attempt.state = ... (a node's state is its own)
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == "state"
                    and not (isinstance(target.value, ast.Name) and target.value.id == "node")
                ):
                    found.append(f"line {node.lineno}: .state assigned")
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_state_writers_change_states(path: Path) -> None:
    assert _state_writes(path) == []


def test_the_writers_refuse_a_move_the_table_forbids() -> None:
    # Checked before any SQL is built: no session is needed to be refused.
    with pytest.raises(IllegalTransition, match="done"):
        move_chunks(None, ChunkState.QUEUED, [ChunkState.DONE], ids=[1])  # type: ignore[arg-type]


def test_the_tables_cover_every_state_and_finished_work_stays_finished() -> None:
    assert set(CHUNK_TRANSITIONS) == set(ChunkState)
    assert set(ATTEMPT_TRANSITIONS) == set(AttemptState)
    assert set(JOB_TRANSITIONS) == set(JobState)
    assert CHUNK_TRANSITIONS[ChunkState.DONE] == frozenset()  # a done chunk never renders again
    assert JOB_TRANSITIONS[JobState.DONE] == JOB_TRANSITIONS[JobState.CANCELLED] == frozenset()
    finished = {AttemptState.DONE, AttemptState.FAILED, AttemptState.SUPERSEDED}
    assert all(ATTEMPT_TRANSITIONS[state] == frozenset() for state in finished)
    # only an operator's retry takes a cancelled or failed chunk back to the queue
    assert sources_of(CHUNK_TRANSITIONS, ChunkState.QUEUED) == {
        ChunkState.DISPATCHED, ChunkState.RUNNING, ChunkState.FAILED, ChunkState.CANCELLED
    }  # fmt: skip
