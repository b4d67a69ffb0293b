"""Placement: requirements, blocklists, and the emptiest matching node first."""

from __future__ import annotations

from collections import Counter

from scheduler.core.placement import NodeView, Placement, Requirements, can_ever_run
from scheduler.core.policy import DispatchSnapshot, JobCandidate, QueuedChunk, plan_dispatch

GPU = Requirements(gpus=1)
BLENDER = Requirements(tags=frozenset({"blender-4.5"}))


def node(name: str, free: int, **hardware: object) -> NodeView:
    return NodeView(name, "cpu", free, **hardware)  # type: ignore[arg-type]


def test_the_emptiest_matching_node_first() -> None:
    placement = Placement([node("a", 1), node("b", 3), node("c", 2)])
    taken = [placement.place("cpu", Requirements()) for _ in range(7)]
    assert Counter(taken) == {"a": 1, "b": 3, "c": 2, None: 1}
    assert taken[0] == "b" and placement.room("cpu") == 0


def test_requirements_and_blocklists() -> None:
    nodes = [
        node("cpu-1", 4, cores=8),
        node("gpu-1", 1, cores=32, gpus=2, tags=frozenset({"blender-4.5"})),
    ]
    placement = Placement(nodes)
    assert placement.place("cpu", GPU) == "gpu-1"
    assert placement.place("cpu", GPU) is None  # its only GPU node is full
    assert placement.place("cpu", Requirements(cores=16)) is None
    assert placement.place("cpu", Requirements(), avoid={"cpu-1"}) is None
    assert placement.place("cpu", Requirements(cores=4)) == "cpu-1"
    assert can_ever_run(nodes, "cpu", BLENDER)
    assert not can_ever_run(nodes, "cpu", Requirements(memory_bytes=2**40))
    assert not can_ever_run(nodes, "gpu", Requirements())


def test_a_job_no_node_can_take_now_does_not_hold_up_the_others() -> None:
    picky = JobCandidate(1, 1, 90, "cpu", tuple(QueuedChunk(c, 0) for c in (10, 11)), needs=GPU)
    plain = JobCandidate(2, 1, 10, "cpu", tuple(QueuedChunk(c, 0) for c in (20, 21, 22)))
    snapshot = DispatchSnapshot([picky, plain], nodes=[node("cpu-1", 2), node("gpu-1", 1, gpus=1)])
    plan = plan_dispatch(snapshot, 0.0)
    assert [(a.chunk_id, a.node) for a in plan] == [(10, "gpu-1"), (20, "cpu-1"), (21, "cpu-1")]
