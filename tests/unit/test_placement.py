"""Placement: requirements, blocklists, and the emptiest matching node first."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.placement import LiveNodes, NodeView, Placement, Requirements, Room
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
node_specs = st.tuples(st.integers(0, 3), st.integers(0, 6), st.integers(0, 2))
asks = st.tuples(
    st.integers(0, 3),
    st.frozensets(st.integers(0, 11), max_size=3),  # nodes to avoid
    st.sampled_from([(), ("east",), ("west", "east")]),  # regions preferred
)


@settings(max_examples=200, deadline=None)
@given(st.lists(node_specs, max_size=12), st.integers(0, 3), st.lists(asks, max_size=30))
def test_a_tick_room_over_nodes_kept_between_ticks_places_as_the_room_each_node_has(
    nodes: list[tuple[int, int, int]],
    buffer: int,
    wanted: list[tuple[int, frozenset[int], tuple[str, ...]]],
) -> None:
    """The live nodes are grouped once and kept; a tick adds the pool's buffer and the
    busy counts. It places exactly as nodes made afresh with each one's room would."""
    views = [
        node(f"n{i}", slots, slots=slots, **KINDS[kind]) for i, (kind, slots, _) in enumerate(nodes)
    ]
    busy = {f"n{i}": n for i, (_, _, n) in enumerate(nodes) if n}
    kept = Placement(Room(LiveNodes(views), {"cpu": buffer}, busy))
    afresh_views = [
        node(v.name, v.slots + buffer - busy.get(v.name, 0), slots=v.slots, **KINDS[kind])
        for v, (kind, _, _) in zip(views, nodes, strict=True)
    ]
    afresh = Placement(Room.of(afresh_views))
    assert kept.room("cpu") == afresh.room("cpu") == sum(max(0, v.free) for v in afresh_views)
    for kind, avoid, prefer in wanted:
        names = {f"n{i}" for i in avoid}
        chosen = kept.place("cpu", NEEDS[kind], names, prefer)
        assert chosen == afresh.place("cpu", NEEDS[kind], names, prefer)
        assert kept.room("cpu") == afresh.room("cpu")


changes = st.lists(
    st.tuples(st.integers(0, 7), st.one_of(st.none(), node_specs)), max_size=40
)  # (node, its new kind and slots; None: it goes)


@settings(max_examples=200, deadline=None)
@given(changes, st.integers(0, 2), st.lists(asks, max_size=20))
def test_live_nodes_changed_node_by_node_are_the_live_nodes_read_afresh(
    steps: list[tuple[int, tuple[int, int, int] | None]],
    buffer: int,
    wanted: list[tuple[int, frozenset[int], tuple[str, ...]]],
) -> None:
    """The roster keeps its live nodes and puts or drops the nodes that change: the
    classes, the room and every placement are those of the same nodes read at once."""
    kept = LiveNodes()
    now: dict[str, NodeView] = {}
    for index, spec in steps:
        name = f"n{index}"
        if spec is None:
            assert kept.drop(name) == (name in now)
            now.pop(name, None)
            continue
        kind, slots, _ = spec
        view = node(name, slots, slots=slots, **KINDS[kind])
        assert kept.put(view) == (now.get(name) != view)
        now[name] = view
    afresh = LiveNodes(now.values())
    assert kept.count == afresh.count and kept.views == afresh.views
    assert kept.classes.keys() == afresh.classes.keys()
    for key, group in afresh.classes.items():
        mine = kept.classes[key]
        assert (mine.count, mine.slots, mine.idle) == (group.count, group.slots, group.idle)
        assert sorted(mine.heap) == sorted(group.heap) and mine.heap[0] == min(group.heap)
    ours = Placement(Room(kept, {"cpu": buffer}))
    theirs = Placement(Room(afresh, {"cpu": buffer}))
    for kind, avoid, prefer in wanted:
        names = {f"n{i}" for i in avoid}
        assert ours.place("cpu", NEEDS[kind], names, prefer) == theirs.place(
            "cpu", NEEDS[kind], names, prefer
        )
