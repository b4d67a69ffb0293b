"""Which chunks travel together (scheduler/core/bundles.py), and how a bundle is named
and revoked on the wire (scheduler/wire/messages.py, scheduler/wire/broker.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.bundles import JobPace, bundle_groups
from scheduler.wire.broker import SentBundles
from scheduler.wire.messages import attempt_task_ids, bundle_task_id, task_id_for


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


def test_a_bundle_is_revoked_once_every_attempt_it_carries_is() -> None:
    sent = SentBundles()
    one, two, three = (task_id_for(c, 1) for c in (1, 2, 3))
    sent.add("bundle-a", [one, two])
    sent.add("bundle-b", [three])
    assert sent.revoked([one]) == []  # the other chunk is still wanted: it goes on
    assert sent.revoked([one]) == []  # revoked twice: nothing new
    assert sent.revoked([two, three, "chunk-9-attempt-1"]) == ["bundle-a", "bundle-b"]
    assert sent.revoked([two]) == []  # once only


def test_a_cancelled_jobs_bundle_is_revoked_though_some_of_its_chunks_rendered() -> None:
    """A cancel revokes the attempts still open: those that ended are not among them."""
    sent = SentBundles()
    one, two, three = (task_id_for(c, 1) for c in (1, 2, 3))
    sent.add("bundle-a", [one, two, three])
    assert sent.ended([one]) == []
    assert sent.revoked([two, three]) == ["bundle-a"]


def test_a_bundle_is_revoked_when_the_chunk_still_wanted_in_it_ends() -> None:
    """The chunk rendering was wanted; the one behind it was revoked meanwhile."""
    sent = SentBundles()
    one, two = task_id_for(1, 1), task_id_for(2, 1)
    sent.add("bundle-a", [one, two])
    assert sent.revoked([two]) == []
    assert sent.ended([one]) == ["bundle-a"]
    sent.add("bundle-b", [task_id_for(3, 1), task_id_for(4, 1)])
    assert sent.ended([task_id_for(3, 1), task_id_for(4, 1)]) == []  # all rendered
    assert sent.revoked([task_id_for(4, 1)]) == []  # forgotten: nothing to stop


def test_the_oldest_bundles_are_forgotten() -> None:
    sent = SentBundles()
    sent.KEEP = 2
    for n in range(3):
        sent.add(f"bundle-{n}", [task_id_for(n, 1)])
    assert sent.revoked([task_id_for(0, 1)]) == []  # forgotten: revoked alone, as any
    assert sent.revoked([task_id_for(2, 1)]) == ["bundle-2"]
