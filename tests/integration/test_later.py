"""Calls due later on a render node (workers/later.py): one thread per
process runs them in the order they fall due; a forked render slot runs its own."""

from __future__ import annotations

import os
import threading

import pytest

from tests.conftest import wait_for
from workers.later import Later

pytestmark = pytest.mark.integration


def later_threads() -> int:
    """Threads of ``Later``s in this process (counting all of its threads, one of an
    earlier test's ending meanwhile made the count fail in CI)."""
    return sum(thread.name == "later" for thread in threading.enumerate())


def test_calls_run_when_due_in_order_on_one_thread() -> None:
    later = Later()
    ran: list[tuple[str, str]] = []
    before = later_threads()
    for delay, name in [(0.3, "c"), (0.1, "a"), (0.2, "b"), (0.1, "a2")]:
        later.call(delay, lambda name=name: ran.append((name, threading.current_thread().name)))
    assert later_threads() == before + 1  # one thread, not one per call
    wait_for(lambda: len(ran) == 4, 5, "the calls")
    assert [name for name, _ in ran] == ["a", "a2", "b", "c"]
    assert {thread for _, thread in ran} == {"later"}


def test_a_forked_slot_runs_its_own_calls_not_its_parents() -> None:
    later = Later()
    parent: list[str] = []
    later.call(0.5, lambda: parent.append("parent"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the render slot
        try:
            done = threading.Event()
            later.call(0.05, done.set)
            os.write(write, b"1" if done.wait(5) else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    wait_for(lambda: parent == ["parent"], 5, "the parent's call")
