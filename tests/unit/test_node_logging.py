"""A node's log: Celery's per-task lines only at DEBUG; failures always."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from workers.node import PER_TASK_LOGGERS, quiet_per_task_lines


@pytest.fixture(autouse=True)
def restore_levels() -> Iterator[None]:
    before = {name: logging.getLogger(name).level for name in PER_TASK_LOGGERS}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def test_celerys_per_task_lines_are_quiet_unless_the_node_logs_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace = logging.getLogger("celery.app.trace")
    quiet_per_task_lines("INFO")
    with caplog.at_level(logging.DEBUG):
        trace.info("Task renderfarm.render_chunk[chunk-1-attempt-1] succeeded in 0.01s")
        trace.error("Task renderfarm.render_chunk[chunk-2-attempt-1] raised unexpected")
    assert [r.levelname for r in caplog.records] == ["ERROR"]

    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    quiet_per_task_lines("debug")
    assert {logging.getLogger(n).level for n in PER_TASK_LOGGERS} == {logging.NOTSET}
