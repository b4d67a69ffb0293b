"""The dispatch policy and the failure, event and reconcile decisions, table by table."""

from __future__ import annotations

from collections import Counter

import pytest

from scheduler.core.pace import CompletionRate
from scheduler.core.placement import NodeView, Room
from scheduler.core.policy import (
    Assignment,
    DispatchSnapshot,
    JobCandidate,
    QueuedChunk,
    accepts_event,
    chunk_state_after_failure,
    exceeds_failure_limit,
    fits_limits,
    is_node_lost,
    plan_dispatch,
    queue_buffer,
    retry_delay,
    unclaimed_to_resend,
    vanished_attempts,
)
from scheduler.core.states import ChunkState
from scheduler.dispatch.ingestion import _held_seconds


def job(job_id: int, priority: int, chunks: list[int], pool: str = "cpu") -> JobCandidate:
    return JobCandidate(job_id, 1, priority, pool, tuple(QueuedChunk(c, 0) for c in chunks))


def snapshot(jobs: list[JobCandidate], **pools: int) -> DispatchSnapshot:
    """Each pool one node, with this much room."""
    nodes = Room.of(NodeView(f"{p}-1", p, room) for p, room in pools.items())
    return DispatchSnapshot(jobs, room=nodes)


def chunk_ids(assignments: list[Assignment]) -> list[int]:
    return [a.chunk_id for a in assignments]


def test_higher_priority_first_then_older_submission() -> None:
    plan = plan_dispatch(
        snapshot([job(1, 50, [10, 11]), job(2, 90, [20, 21]), job(3, 50, [30])], cpu=3), 0.0
    )
    assert chunk_ids(plan) == [20, 21, 10]


def test_only_the_room_of_the_nodes_is_filled() -> None:
    nodes = [NodeView("cpu-1", "cpu", 1), NodeView("cpu-2", "cpu", 0), NodeView("cpu-3", "cpu", -2)]
    plan = plan_dispatch(DispatchSnapshot([job(1, 50, [1, 2, 3, 4])], room=Room.of(nodes)), 0.0)
    assert [(a.chunk_id, a.node) for a in plan] == [(1, "cpu-1")]


def test_a_pool_without_live_nodes_gets_nothing() -> None:
    assert plan_dispatch(DispatchSnapshot([job(1, 50, [1])]), 0.0) == []


def test_pools_fill_independently() -> None:
    plan = plan_dispatch(
        snapshot([job(1, 90, [1, 2, 3], "gpu"), job(2, 10, [4, 5], "cpu")], cpu=1, gpu=2),
        0.0,
    )
    assert {(a.pool, a.chunk_id) for a in plan} == {("gpu", 1), ("gpu", 2), ("cpu", 4)}


def test_unknown_pool_gets_nothing() -> None:
    assert plan_dispatch(snapshot([job(1, 50, [1], "houdini")], cpu=4), 0.0) == []


def test_attempt_numbers_follow_attempts_made() -> None:
    candidate = JobCandidate(1, 1, 50, "cpu", (QueuedChunk(7, attempts=2),))
    (assignment,) = plan_dispatch(snapshot([candidate], cpu=1), 0.0)
    assert assignment == Assignment(
        chunk_id=7, job_id=1, pool="cpu", attempt=3, studio_id=1, node="cpu-1"
    )


def test_a_retry_waits_for_its_time() -> None:
    candidate = JobCandidate(
        1, 1, 50, "cpu", (QueuedChunk(1, 1, not_before=100.0), QueuedChunk(2, 0))
    )
    assert chunk_ids(plan_dispatch(snapshot([candidate], cpu=2), 50.0)) == [2]
    assert chunk_ids(plan_dispatch(snapshot([candidate], cpu=2), 100.5)) == [1, 2]


@pytest.mark.parametrize(
    ("made", "allowed", "state"),
    [
        (1, 3, ChunkState.QUEUED),
        (2, 3, ChunkState.QUEUED),
        (3, 3, ChunkState.FAILED),
        (1, 1, ChunkState.FAILED),
    ],
)
def test_failure_retries_while_attempts_remain(made: int, allowed: int, state: ChunkState) -> None:
    assert chunk_state_after_failure(made, allowed) == state


@pytest.mark.parametrize(
    ("state", "current", "event", "accepted"),
    [
        (ChunkState.DISPATCHED, 1, 1, True),
        (ChunkState.RUNNING, 2, 2, True),
        (ChunkState.RUNNING, 2, 1, False),  # a superseded attempt
        (ChunkState.DONE, 1, 1, False),  # a duplicate after the chunk finished
        (ChunkState.CANCELLED, 1, 1, False),
        (ChunkState.QUEUED, 1, 1, False),  # requeued: the old attempt no longer counts
    ],
)
def test_accepts_event(state: ChunkState, current: int, event: int, accepted: bool) -> None:
    assert accepts_event(state, current, event) is accepted


def test_node_lost_after_timeout() -> None:
    assert not is_node_lost(last_heartbeat=100.0, now=159.0, timeout=60.0)
    assert is_node_lost(last_heartbeat=100.0, now=161.0, timeout=60.0)


def test_unclaimed_chunks_are_resent_only_when_the_queue_is_empty() -> None:
    sent = [(1, 10.0), (2, 50.0)]
    assert unclaimed_to_resend(sent, broker_depth=3, now=100.0, after=30.0) == []
    assert unclaimed_to_resend(sent, broker_depth=0, now=100.0, after=30.0) == [1, 2]
    assert unclaimed_to_resend(sent, broker_depth=0, now=70.0, after=30.0) == [1]


@pytest.mark.parametrize(
    ("per_second", "tick", "buffer"),
    [
        (0.0, 0.5, 2),  # idle pool: the minimum
        (2.0, 0.5, 4),  # renders of seconds: 2/s x 0.5 s x 4 ticks
        (0.6, 0.5, 2),  # renders of minutes: the minimum keeps JIT responsive
        (300.0, 0.02, 24),  # millisecond chunks: a deeper queue
        (20_000.0, 0.5, 1024),  # never beyond the maximum
    ],
)
def test_queue_buffer_covers_a_dispatch_round_trip(
    per_second: float, tick: float, buffer: int
) -> None:
    assert queue_buffer(per_second, tick, minimum=2, maximum=1024) == buffer


def test_attempts_a_node_stopped_listing_are_vanished() -> None:
    running = [
        (1, "chunk-1-attempt-1", 100.0),
        (2, "chunk-2-attempt-1", 100.0),
        (3, "chunk-3-attempt-2", 109.5),
    ]
    listed = {"chunk-2-attempt-1"}
    # chunk 3 started too recently for the report to be trusted about it
    assert vanished_attempts(running, listed, reported_at=110.0, grace=2.0) == [1]


@pytest.mark.parametrize(
    ("made", "delay"), [(1, 10.0), (2, 20.0), (3, 40.0), (6, 320.0), (7, 600.0), (30, 600.0)]
)
def test_retry_delay_doubles_up_to_a_cap(made: int, delay: float) -> None:
    assert retry_delay(made, base=10.0, cap=600.0) == delay


@pytest.mark.parametrize(
    ("failed", "limit", "stop"), [(0, None, False), (99, None, False), (2, 3, False), (3, 3, True)]
)
def test_failure_limit(failed: int, limit: int | None, stop: bool) -> None:
    assert exceeds_failure_limit(failed, limit) is stop


def test_named_limits_are_never_exceeded() -> None:
    licensed = JobCandidate(1, 1, 90, "cpu", tuple(QueuedChunk(c, 0) for c in range(10, 16)),
                            limits=("houdini",))  # fmt: skip
    free = JobCandidate(2, 1, 10, "cpu", tuple(QueuedChunk(c, 0) for c in range(20, 26)))
    snapshot = DispatchSnapshot(
        [licensed, free],
        room=Room.of([NodeView("cpu-1", "cpu", 6)]),
        limits={"houdini": 3},
        limits_used={"houdini": 1},  # one licence is held by a render already running
    )
    assert Counter(a.job_id for a in plan_dispatch(snapshot, 0.0)) == {1: 2, 2: 4}


@pytest.mark.parametrize(
    ("wanted", "used", "fits"),
    [((), {}, True), (("a",), {"a": 1}, True), (("a",), {"a": 2}, False),
     (("a", "b"), {"b": 5}, False), (("gone",), {}, False)],
)  # fmt: skip
def test_fits_limits(wanted: tuple[str, ...], used: dict[str, int], fits: bool) -> None:
    assert fits_limits(wanted, {"a": 2, "b": 5}, used) is fits


def test_a_burst_of_short_chunks_is_read_at_its_rate_from_its_first_second() -> None:
    """The rate is over the time the counts cover, not the whole window: a pool that
    began finishing chunks a second ago has its queues deepened at once."""
    fresh = CompletionRate(window=5.0, turn=0.1)  # no tick yet: read over one turn
    fresh.record(1000.0, {"cpu": [0.001] * 3})
    assert fresh.per_second("cpu", 1000.0) == pytest.approx(3 / 0.1)
    rates = CompletionRate(window=5.0, turn=0.1)
    for turn in range(11):  # ten turns of 0.1 s, 40 chunks each: 400 a second
        rates.note_tick(1000.0 + turn * 0.1)
        if turn:
            rates.record(1000.0 + turn * 0.1, {"cpu": [0.001] * 40})
    assert rates.per_second("cpu", 1001.0) == pytest.approx(400.0)
    assert rates.per_second("gpu", 1001.0) == 0.0
    assert rates.tick == pytest.approx(0.1)  # so the pool's queues hold 160 beyond its slots
    # Quiet past the window: the pool is idle again; the next burst starts afresh.
    assert rates.per_second("cpu", 1010.0) == 0.0
    rates.note_tick(1010.0)
    rates.record(1010.0, {"cpu": [0.001]})  # counted over the tick before it
    assert rates.per_second("cpu", 1010.0) == pytest.approx(1 / rates.tick)
    # A steady rate over more than the window reads as the count over the window.
    for second in range(1, 9):
        rates.note_tick(1010.0 + second)
        rates.record(1010.0 + second, {"cpu": [0.001] * 10})
    assert rates.per_second("cpu", 1018.5) == pytest.approx(50 / 5.0)


def test_chunks_longer_than_the_time_counted_are_read_at_their_own_pace() -> None:
    """Four ten-minute chunks of a pool of four slots end in one turn: not forty a
    second (which would queue 160 more ten-minute chunks on the pool's node), but four
    slots at one chunk per ten minutes. One such chunk ending among 400 one-millisecond
    chunks a second leaves their rate as it was; a node clock that stepped back (a
    start "at 0") adds next to nothing."""
    rates = CompletionRate(window=5.0, turn=0.1)
    rates.note_tick(1000.0)
    rates.record(1000.0, {"cpu": [600.0] * 4})
    assert rates.per_second("cpu", 1000.0) == pytest.approx(4 / 600.0)
    assert queue_buffer(rates.per_second("cpu", 1000.0), rates.tick, 2, 1024) == 2
    mixed = CompletionRate(window=5.0, turn=0.1)
    for turn in range(11):
        mixed.note_tick(2000.0 + turn * 0.1)
        if turn:
            mixed.record(2000.0 + turn * 0.1, {"cpu": [0.001] * 40})
    held = _held_seconds(started_at=2001.0 - 600.0, at=2001.0, reports=[])
    stepped = _held_seconds(started_at=0.0, at=2001.0, reports=[])
    mixed.record(2001.0, {"cpu": [held, stepped]})
    assert mixed.per_second("cpu", 2001.0) == pytest.approx(400.0 + 1 / 600.0 + 1 / 2001.0)


def test_a_job_of_instant_chunks_fills_its_pool_s_queue_within_four_turns() -> None:
    """After an idle spell of quick turns, a pool whose node renders 100 chunks a turn
    and finishes all it was sent: its queue holds a turn's work from the fourth turn on,
    and never runs dry after. (Read over half a second, and times the idle turns' mean
    of 5 ms, the first second of such a job left the node idle most of the time.)"""
    rates = CompletionRate(window=5.0, turn=0.1)
    now = 1000.0
    for _ in range(10):  # idle: the scheduler turns on each heartbeat, 5 ms apart
        rates.note_tick(now)
        now += 0.005
    slots, per_turn, queued, dry = 4, 100, 0, []
    for _ in range(12):
        finished = min(queued, per_turn)
        queued -= finished
        if finished:
            rates.record(now, {"cpu": [5e-4] * finished})
        rates.note_tick(now)
        buffer = queue_buffer(rates.per_second("cpu", now), rates.tick, 2, 1024)
        queued += max(0, slots + buffer - queued)  # what dispatch_tick sends: its room
        dry.append(queued <= per_turn)  # all of it rendered before the next turn
        now += 0.1
    assert dry[:3] == [True, True, True]  # unknown chunks start small: 6, then 28, 72
    assert not any(dry[3:]), dry
