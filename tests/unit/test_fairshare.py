"""Fair share between studios: turn order, minimums, maximums, and shares over many ticks."""

from __future__ import annotations

from collections import Counter, deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.fairshare import PoolTerms, StudioShare, TurnOrder, next_studio
from scheduler.core.placement import NodeView, Room
from scheduler.core.policy import (
    DispatchSnapshot,
    JobCandidate,
    QueuedChunk,
    passes_after,
    plan_dispatch,
)

A, B, C = 1, 2, 3


@pytest.mark.parametrize(
    ("active", "shares", "turn"),
    [
        ({A: 0, B: 0}, {}, A),  # equal: the lower id
        ({A: 1, B: 0}, {}, B),
        ({A: 1, B: 2}, {B: StudioShare(weight=3)}, B),  # 2/3 < 1/1
        ({A: 1, B: 3}, {B: StudioShare(weight=3)}, B),  # deficits 0.25 and 0.75
        ({A: 3, B: 9}, {B: StudioShare(weight=3)}, B),  # 13 slots: quotas 3.25 and 9.75
        ({A: 2, B: 8}, {B: StudioShare(weight=3)}, A),  # 11 slots: deficits 0.75 and 0.25
        ({A: 0, B: 5}, {B: StudioShare(minimum=6)}, B),  # below its minimum: first
        ({A: 0, B: 5}, {A: StudioShare(maximum=0)}, B),  # A may not burst at all
        ({A: 4, B: 4}, {A: StudioShare(maximum=4), B: StudioShare(maximum=4)}, None),
    ],
)
def test_next_studio(
    active: dict[int, int], shares: dict[int, StudioShare], turn: int | None
) -> None:
    total = sum(active.values()) + 1  # one slot to hand out
    assert next_studio(active, active, shares, total) == turn


def test_a_tie_in_deficit_goes_to_the_studio_with_the_lower_pass() -> None:
    shares = {B: StudioShare(weight=3)}
    held = {A: 1, B: 4}  # 6 shared slots: quotas 1.5 and 4.5, deficits 0.5 and 0.5
    assert next_studio(held, held, shares, total=6, passes={A: 7.0, B: 2.0}) == B
    assert next_studio(held, held, shares, total=6, passes={A: 2.0, B: 7.0}) == A


def backlog(studio: int, first_id: int, n: int, priority: int = 50) -> JobCandidate:
    chunks = tuple(QueuedChunk(first_id + i, 0) for i in range(n))
    return JobCandidate(first_id, studio, priority, "cpu", chunks)


def cpu(room: int) -> Room:
    """The "cpu" pool as one node with this much room (slots + buffer - chunks held)."""
    return Room.of([NodeView("cpu-1", "cpu", room)])


def test_a_studio_alone_takes_the_whole_pool() -> None:
    snapshot = DispatchSnapshot([backlog(A, 100, 20)], room=cpu(8))
    assert len(plan_dispatch(snapshot, 0.0)) == 8


def test_free_slots_are_shared_by_weight() -> None:
    snapshot = DispatchSnapshot(
        [backlog(A, 100, 20), backlog(B, 200, 20)],
        room=cpu(8),
        weights={B: 3},
    )
    studios = Counter(a.job_id for a in plan_dispatch(snapshot, 0.0))
    assert studios == {100: 2, 200: 6}


def test_running_chunks_count_towards_the_share() -> None:
    snapshot = DispatchSnapshot(
        [backlog(A, 100, 5), backlog(B, 200, 5)],
        room=cpu(4 - 3),  # one slot free
        active={(A, "cpu"): 3},
    )
    assert [a.job_id for a in plan_dispatch(snapshot, 0.0)] == [200]


def test_minimum_is_served_first_and_maximum_never_exceeded() -> None:
    snapshot = DispatchSnapshot(
        [backlog(A, 100, 20), backlog(B, 200, 20), backlog(C, 300, 20)],
        room=cpu(10),
        weights={A: 10, C: 0.1},
        terms={(A, "cpu"): PoolTerms(maximum=2), (C, "cpu"): PoolTerms(minimum=5)},
    )
    plan = plan_dispatch(snapshot, 0.0)
    assert [a.job_id for a in plan[:5]] == [300] * 5
    assert Counter(a.job_id for a in plan) == {300: 5, 100: 2, 200: 3}


def test_within_a_studio_priority_then_submission_order() -> None:
    snapshot = DispatchSnapshot([backlog(A, 100, 5), backlog(A, 200, 5, priority=90)], room=cpu(3))
    assert [a.job_id for a in plan_dispatch(snapshot, 0.0)] == [200, 200, 200]


def test_weights_one_and_three_share_four_slots_over_many_ticks() -> None:
    """Chunks finish oldest first, one per tick; the held slots stay 1:3."""
    running: deque[tuple[int, int]] = deque()  # (studio, chunk id)
    held: Counter[int] = Counter()
    next_id = {A: 1_000, B: 2_000}
    for _tick in range(400):
        if running:
            studio, _ = running.popleft()
            held[studio] -= 1
        jobs = [
            JobCandidate(s, s, 50, "cpu", tuple(QueuedChunk(next_id[s] + i, 0) for i in range(4)))
            for s in (A, B)
        ]
        snapshot = DispatchSnapshot(
            jobs,
            room=cpu(4 - len(running)),
            active={(s, "cpu"): held[s] for s in (A, B)},
            weights={B: 3},
        )
        for assignment in plan_dispatch(snapshot, 0.0):
            studio = assignment.job_id
            running.append((studio, assignment.chunk_id))
            held[studio] += 1
            next_id[studio] += 1
        assert (held[A], held[B]) == (1, 3)


def test_a_queue_beyond_the_slots_keeps_the_running_share_by_weight() -> None:
    """4 slots and a FIFO queue of 2 in front of them: the quotas (1.5 and 4.5) are
    fractional, and the passes carried from tick to tick make the light studio
    alternate between 1 and 2 held, so it runs a quarter of the time."""
    queue: deque[int] = deque()  # studios of queued chunks, oldest first
    running: deque[int] = deque()  # studios of running chunks, oldest first
    passes: dict[tuple[int, str], float] = {}
    ran: Counter[int] = Counter()
    next_id = {A: 1_000, B: 2_000}
    for tick in range(600):
        if running:
            running.popleft()  # the oldest render finishes
        while queue and len(running) < 4:
            running.append(queue.popleft())
        if tick >= 100:
            ran.update(running)
        held = Counter(running) + Counter(queue)
        jobs = [
            JobCandidate(s, s, 50, "cpu", tuple(QueuedChunk(next_id[s] + i, 0) for i in range(6)))
            for s in (A, B)
        ]
        snapshot = DispatchSnapshot(
            jobs,
            room=cpu(4 + 2 - len(running) - len(queue)),  # a buffer of 2
            active={(s, "cpu"): held[s] for s in (A, B)},
            weights={B: 3},
            passes=passes,
        )
        plan = plan_dispatch(snapshot, 0.0)
        passes = passes_after(snapshot, plan)
        for assignment in plan:
            queue.append(assignment.studio_id)
            next_id[assignment.studio_id] += 1
        while queue and len(running) < 4:
            running.append(queue.popleft())
    assert 0.24 <= ran[A] / (ran[A] + ran[B]) <= 0.26


@given(
    st.dictionaries(
        st.integers(1, 6),
        st.tuples(
            st.integers(0, 6),  # held
            st.floats(0.1, 5.0),  # weight
            st.integers(0, 4),  # minimum
            st.one_of(st.none(), st.integers(0, 12)),  # maximum
            st.floats(0.0, 5.0),  # pass
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 20),
)
def test_turn_order_takes_the_turns_next_studio_gives(
    studios: dict[int, tuple[int, float, int, int | None, float]], room: int
) -> None:
    held = {s: v[0] for s, v in studios.items()}
    shares = {s: StudioShare(v[1], v[2], v[3]) for s, v in studios.items()}
    passes = {s: v[4] for s, v in studios.items()}
    total = sum(held.values()) + room
    turns = TurnOrder(studios, held, shares, total, passes)
    expected_held, expected_passes = dict(held), dict(passes)
    for _ in range(room):
        expected = next_studio(studios, expected_held, shares, total, expected_passes)
        assert turns.next() == expected
        if expected is None:
            break
        turns.served(expected)
        expected_held[expected] += 1
        expected_passes[expected] += 1 / shares[expected].weight
