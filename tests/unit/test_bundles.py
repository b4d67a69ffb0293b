"""Which chunks travel together (scheduler/core/bundles.py), how a bundle is named
(scheduler/wire/messages.py), and how a node renders one (workers/runner.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.bundles import JobPace, bundle_groups
from scheduler.wire.messages import (
    MessageError,
    attempt_task_ids,
    bundle_attempts,
    bundle_task_id,
    decode_event,
    task_id_for,
)
from workers import runner
from workers.runner import Coalesced, _Left


def paced(job: int, seconds: float, count: int = JobPace.SEEN, now: float = 0.0) -> JobPace:
    pace = JobPace()
    pace.record(now, {job: [seconds] * count})
    return pace


@pytest.mark.parametrize(
    ("held", "count", "budget", "size"),
    [
        (0.001, JobPace.SEEN, 0.05, 16),  # a millisecond: as many as a message takes
        (0.005, JobPace.SEEN, 0.05, 10),
        (0.02, JobPace.SEEN, 0.05, 2),
        (0.04, JobPace.SEEN, 0.05, 1),  # two would be longer than the budget
        (5.0, JobPace.SEEN, 0.05, 1),  # real renders: one a message
        (0.001, JobPace.SEEN - 1, 0.05, 1),  # too few seen to trust the pace
        (0.001, JobPace.SEEN, 0.0, 1),  # bundling off
        (0.0, JobPace.SEEN, 0.05, 16),  # a clock that did not move: no division by zero
    ],
)
def test_bundle_size_follows_the_jobs_slowest_latest_chunk(
    held: float, count: int, budget: float, size: int
) -> None:
    assert paced(7, held, count).bundle_size(7, budget, 16) == size


def test_one_slow_chunk_among_fast_ones_stops_the_bundling() -> None:
    pace = paced(7, 0.001)
    pace.record(1.0, {7: [2.0]})
    assert pace.bundle_size(7, 0.05, 16) == 1
    pace.record(2.0, {7: [0.001] * (JobPace.SEEN - 1)})  # still among the latest
    assert pace.bundle_size(7, 0.05, 16) == 1
    pace.record(3.0, {7: [0.001]})  # out of them now
    assert pace.bundle_size(7, 0.05, 16) == 16


def test_a_job_unknown_or_forgotten_goes_one_chunk_a_message() -> None:
    pace = paced(7, 0.001)
    assert pace.bundle_size(8, 0.05, 16) == 1
    pace.record(JobPace.KEEP + 1, {9: [0.001]})  # job 7 silent for longer than KEEP
    assert pace.bundle_size(7, 0.05, 16) == 1


def test_a_nodes_chunks_of_one_job_go_together_in_dispatch_order() -> None:
    placed = [("a", 1)] * 8 + [("b", 1)] * 2 + [("a", 2)] * 3
    groups = bundle_groups(placed, lambda node, job: 16 if job == 1 else 1, lambda node: 2)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8], [9], [10], [11], [12]]


def test_a_node_gets_a_message_for_each_slot_before_bundles_grow() -> None:
    placed = [("a", 1)] * 6
    assert bundle_groups(placed, lambda node, job: 16, lambda node: 4) == [[0, 1], [2, 3], [4], [5]]
    assert bundle_groups(placed, lambda node, job: 16, lambda node: 8) == [[i] for i in range(6)]
    assert bundle_groups(placed, lambda node, job: 2, lambda node: 1) == [[0, 1], [2, 3], [4, 5]]


@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 3)), max_size=60),
    st.integers(1, 16),
    st.integers(1, 8),
)
def test_every_chunk_goes_once_in_a_message_no_larger_than_allowed(
    placed: list[tuple[str, int]], size: int, slots: int
) -> None:
    groups = bundle_groups(placed, lambda node, job: size, lambda node: slots)
    assert sorted(i for group in groups for i in group) == list(range(len(placed)))
    for group in groups:
        assert 1 <= len(group) <= size
        assert len({placed[i] for i in group}) == 1  # one node, one job
        assert group == sorted(group)
    assert [group[0] for group in groups] == sorted(group[0] for group in groups)


def test_a_bundles_task_id_names_each_attempt_it_carries() -> None:
    bundle = bundle_task_id([(345, 1), (346, 2)])
    assert attempt_task_ids(bundle) == [task_id_for(345, 1), task_id_for(346, 2)]
    assert attempt_task_ids(task_id_for(345, 1)) == [task_id_for(345, 1)]
    assert attempt_task_ids("chunks-garbage") == ["chunks-garbage"]  # not ours: itself
    assert attempt_task_ids("chunks-1.2+x.3") == ["chunks-1.2+x.3"]


def test_a_bundles_attempts_are_read_from_its_task_id() -> None:
    assert bundle_attempts(bundle_task_id([(345, 1), (346, 2)])) == [(345, 1), (346, 2)]
    assert bundle_attempts(task_id_for(345, 1)) == []
    assert bundle_attempts("chunks-1.2+x.3") == []


class Published:
    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail  # this many publishes fail first

    def __call__(self, events: list[dict[str, Any]]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("the broker is away")
        self.batches.append([e["n"] for e in events])


def test_coalesced_events_go_out_together_in_order_and_all_before_the_block_ends() -> None:
    published = Published()
    with Coalesced(published, wait=60.0) as emit:  # no timer fires meanwhile
        for n in range(5):
            emit({"n": n})
        assert published.batches == []
    assert published.batches == [[0, 1, 2, 3, 4]]


def test_coalesced_events_the_broker_did_not_take_wait_for_the_next_flush() -> None:
    published = Published(fail=1)
    box = Coalesced(published, wait=60.0)
    box.emit({"n": 1})
    with pytest.raises(ConnectionError):
        box.flush()  # as the timer's would: the events stay
    box.emit({"n": 2})
    box.flush()
    assert published.batches == [[1, 2]]


def test_a_slow_bundle_hands_back_what_it_has_not_started() -> None:
    left = _Left([{"n": 1}, {"n": 2}, {"n": 3}])
    assert left.next() == {"n": 1}
    sent: list[dict[str, Any]] = []
    left.hand_back(sent.append)
    assert sent == [{"n": 2}, {"n": 3}] and left.next() is None
    left.hand_back(sent.append)  # nothing left: nothing sent
    assert len(sent) == 2


def test_each_chunk_is_handed_back_or_rendered_in_the_bundle_never_both() -> None:
    """The broker fails on the third: the first two went, the rest render here; an
    unreadable one stays to fail here with its reason."""
    left = _Left([{"n": n} for n in range(1, 6)])
    sent: list[int] = []

    def send(data: dict[str, Any]) -> None:
        if data["n"] == 2:
            raise MessageError("unreadable")
        if data["n"] == 4:
            raise ConnectionError("the broker is away")
        sent.append(data["n"])

    left.hand_back(send)
    assert sent == [1, 3]
    rendered_here = []
    while (data := left.next()) is not None:
        rendered_here.append(data["n"])
    assert rendered_here == [2, 4, 5]


def test_each_chunk_of_a_bundle_reports_and_a_defect_fails_only_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def chunk(n: int) -> dict[str, Any]:
        return {
            "chunk_id": n, "attempt": 1, "job_id": 1, "pool": "cpu", "frames": [n],
            "renderer": "noop", "settings": {}, "output_pattern": "f_{frame}.png",
            "log_path": f"c{n}.log", "timeout": 60.0,
        }  # fmt: skip

    published: list[dict[str, Any]] = []
    real = runner.run_chunk

    def defective(message: Any, *args: Any) -> bool:
        if message.chunk_id == 2:
            raise RuntimeError("a defect")
        return real(message, *args)

    monkeypatch.setattr(runner, "run_chunk", defective)
    unreadable = {**chunk(4), "frames": "all"}
    rendered = runner.run_messages(
        [chunk(1), chunk(2), chunk(3), unreadable], tmp_path, "node", published.extend
    )
    assert rendered == 2
    events = [decode_event(e) for e in published]
    assert [(type(e).__name__, e.chunk_id) for e in events] == [
        ("FinishedEvent", 1), ("FailedEvent", 2), ("FinishedEvent", 3), ("FailedEvent", 4)
    ]  # fmt: skip
    assert "a defect" in events[1].error and "frames must be a list" in events[3].error
