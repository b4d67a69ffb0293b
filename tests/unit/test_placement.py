"""Placement: requirements, blocklists, and the emptiest matching node first."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.placement import (
    LiveNodes,
    NodeView,
    Placement,
    Requirements,
    Room,
    matches,
)
from scheduler.core.policy import DispatchSnapshot, JobCandidate, QueuedChunk, plan_dispatch

GPU = Requirements(gpus=1)
BLENDER = Requirements(tags=frozenset({"blender-4.5"}))


def node(name: str, free: int, **hardware: object) -> NodeView:
    return NodeView(name, "cpu", free, **hardware)  # type: ignore[arg-type]


def test_the_emptiest_matching_node_first() -> None:
    placement = Placement(Room.of([node("a", 1), node("b", 3), node("c", 2)]))
    taken = [placement.place("cpu", Requirements()) for _ in range(7)]
    assert Counter(taken) == {"a": 1, "b": 3, "c": 2, None: 1}
    assert taken[0] == "b" and placement.room("cpu") == 0


def test_requirements_and_blocklists() -> None:
    nodes = [
        node("cpu-1", 4, cores=8),
        node("gpu-1", 1, cores=32, gpus=2, tags=frozenset({"blender-4.5"})),
    ]
    placement = Placement(Room.of(nodes))
    assert placement.place("cpu", GPU) == "gpu-1"
    assert placement.place("cpu", GPU) is None  # its only GPU node is full
    assert placement.place("cpu", Requirements(cores=16)) is None
    assert placement.place("cpu", Requirements(), avoid={"cpu-1"}) is None
    assert placement.place("cpu", Requirements(cores=4)) == "cpu-1"
    assert Room.of(nodes).can_ever_run("cpu", BLENDER)
    assert not Room.of(nodes).can_ever_run("cpu", Requirements(memory_bytes=2**40))
    assert not Room.of(nodes).can_ever_run("gpu", Requirements())


def test_an_avoided_node_gives_way_to_the_next_emptiest_of_its_kind() -> None:
    nodes = [node("a", 4), node("b", 3), node("c", 2), node("d", 1)]
    busy = {"a": 1, "b": 2}  # rooms now 3, 1, 2, 1
    placement = Placement(Room(LiveNodes(nodes), {}, busy))
    assert placement.place("cpu", Requirements(), avoid={"a"}) == "c"
    assert placement.place("cpu", Requirements(), avoid={"a"}) == "b"  # b and c: 1 each
    assert placement.place("cpu", Requirements(), avoid={"a", "c"}) == "d"
    assert placement.place("cpu", Requirements()) == "a"


def test_a_job_no_node_can_take_now_does_not_hold_up_the_others() -> None:
    picky = JobCandidate(1, 1, 90, "cpu", tuple(QueuedChunk(c, 0) for c in (10, 11)), needs=GPU)
    plain = JobCandidate(2, 1, 10, "cpu", tuple(QueuedChunk(c, 0) for c in (20, 21, 22)))
    nodes = Room.of([node("cpu-1", 2), node("gpu-1", 1, gpus=1)])
    snapshot = DispatchSnapshot([picky, plain], room=nodes)
    plan = plan_dispatch(snapshot, 0.0)
    assert [(a.chunk_id, a.node) for a in plan] == [(10, "gpu-1"), (20, "cpu-1"), (21, "cpu-1")]


KINDS = [
    {"cores": 4, "region": "east"},
    {"cores": 16, "region": "west"},
    {"cores": 16, "gpus": 1, "region": "west"},
    {"cores": 64, "gpus": 2, "region": "east"},
]
NEEDS = [Requirements(), Requirements(cores=16), GPU, Requirements(gpus=2)]
POOLS = ["cpu", "gpu"]
# A node: its number, pool, kind and room when idle (less than none: a node made by hand).
node_specs = st.tuples(st.integers(0, 11), st.integers(0, 1), st.integers(0, 3), st.integers(-2, 5))
changes = st.lists(
    st.tuples(st.integers(0, 11), st.one_of(st.none(), node_specs)), max_size=40
)  # (node, what it becomes; None: it goes)
asks = st.tuples(
    st.integers(0, 1),  # pool
    st.integers(0, 3),  # needs
    st.frozensets(st.integers(0, 11), max_size=3),  # nodes to avoid
    st.sampled_from([(), ("east",), ("west", "east")]),  # regions preferred
)


def view_of(spec: tuple[int, int, int, int]) -> NodeView:
    number, pool, kind, free = spec
    return NodeView(f"n{number}", POOLS[pool], free, slots=max(free, 0), **KINDS[kind])  # type: ignore[arg-type]


Spec = tuple[int, int, int, int]


def live_after(steps: list[tuple[int, Spec | None]]) -> tuple[LiveNodes, dict[str, NodeView]]:
    """Live nodes changed step by step, and what they should be."""
    kept = LiveNodes()
    now: dict[str, NodeView] = {}
    for number, spec in steps:
        name = f"n{number}"
        if spec is None:
            assert kept.drop(name) == (name in now)
            now.pop(name, None)
            continue
        view = view_of((number, *spec[1:]))
        assert kept.put(view) == (now.get(name) != view)
        now[name] = view
    return kept, now


@settings(max_examples=300, deadline=None)
@given(
    changes,
    st.tuples(st.integers(0, 2), st.integers(0, 2)),
    st.dictionaries(st.integers(0, 11), st.integers(1, 3), max_size=8),
    st.lists(asks, max_size=30),
)
def test_placement_takes_the_emptiest_matching_node_of_the_best_region_every_time(
    steps: list[tuple[int, Spec | None]],
    buffers: tuple[int, int],
    busy_numbers: dict[int, int],
    wanted: list[tuple[int, int, frozenset[int], tuple[str, ...]]],
) -> None:
    """Against a plain count of each node's room: live nodes kept between ticks and
    changed node by node, a tick's buffers and busy counts, nodes avoided and regions
    preferred; the room of each pool after every chunk too."""
    live, views = live_after(steps)
    extra = dict(zip(POOLS, buffers, strict=True))
    busy = {f"n{number}": n for number, n in busy_numbers.items()}
    placement = Placement(Room(live, extra, busy))
    room = {name: v.free + extra[v.pool] - busy.get(name, 0) for name, v in views.items()}
    for pool_at, need_at, avoid_numbers, prefer in wanted:
        pool, needs = POOLS[pool_at], NEEDS[need_at]
        avoid = {f"n{number}" for number in avoid_numbers}
        rank = {region: index for index, region in enumerate(prefer)}
        candidates = [
            (rank.get(v.region, len(rank)), -room[name], name)
            for name, v in views.items()
            if v.pool == pool and matches(v, needs) and name not in avoid and room[name] > 0
        ]
        left = sum(max(0, room[name]) for name, v in views.items() if v.pool == pool)
        assert placement.room(pool) == left
        chosen = placement.place(pool, needs, avoid, prefer)
        assert chosen == (min(candidates)[2] if candidates else None)
        if chosen is not None:
            room[chosen] -= 1


@settings(max_examples=200, deadline=None)
@given(changes)
def test_live_nodes_changed_node_by_node_are_the_live_nodes_read_afresh(
    steps: list[tuple[int, Spec | None]],
) -> None:
    """The roster keeps its live nodes and puts or drops the nodes that change: its
    classes are those of the same nodes read at once."""
    kept, views = live_after(steps)
    afresh = LiveNodes(views.values())
    assert kept.per_pool() == afresh.per_pool() and kept.views == afresh.views
    assert kept.classes.keys() == afresh.classes.keys()
    for key, group in afresh.classes.items():
        mine = kept.classes[key]
        assert (mine.count, mine.slots, mine.idle) == (group.count, group.slots, group.idle)
        assert sorted(mine.short) == sorted(group.short)
        assert sorted(mine.heap) == sorted(group.heap) and mine.heap[0] == min(group.heap)
