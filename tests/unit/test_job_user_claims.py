"""Each running session of a node holds a job user no other session holds (a lock per
user, shared by the node's slot processes), when the node has several."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from workers.job_user import JobUser, NodeJobUser, RunAsUnavailable

A = JobUser("job-a", 5001, "job-a", frozenset({5001}))
B = JobUser("job-b", 5002, "job-b", frozenset({5002}))


def test_sessions_at_once_get_users_of_their_own_and_wait_when_all_are_held(
    tmp_path: Path,
) -> None:
    users = NodeJobUser()
    users.use([A, B], tmp_path)
    with users.claim() as first, users.claim() as second:
        assert {first, second} == {A, B}
        with pytest.raises(RunAsUnavailable, match="every job user"), users.claim(wait=0.2):
            pass
    with users.claim() as again:  # released with their sessions
        assert again == A


def _hold(
    locks: str, held: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event
) -> None:
    users = NodeJobUser()
    users.use([A, B], Path(locks))
    with users.claim() as user:
        assert user == A
        held.set()
        done.wait(10)


def test_a_user_held_by_another_slot_process_is_not_handed_out(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # as Celery's prefork slots are
    held, done = context.Event(), context.Event()
    other = context.Process(target=_hold, args=(str(tmp_path), held, done))
    other.start()
    try:
        assert held.wait(10)
        users = NodeJobUser()
        users.use([A, B], tmp_path)
        with users.claim() as user:
            assert user == B
    finally:
        done.set()
        other.join(10)


def test_one_user_or_none_is_everyone_s() -> None:
    users = NodeJobUser()
    with users.claim() as nobody:
        assert nobody is None
    users.use([A])
    with users.claim() as first, users.claim() as second:
        assert first == second == A
