"""Placement: which render node a chunk goes to.

Each node has a queue of its own (``node.<name>``), kept about as deep as its free
slots plus a small buffer. A job may require a minimum of cores, memory and GPUs and
a set of tags, and an OpenJD step its ``hostRequirements`` (``HostRequirements``:
amounts within bounds and attribute values, matched against what each node reports
of itself); only matching nodes render it, and a node on which the job failed too
often is avoided (a blocklist per job). Nodes with the same hardware, tags and
capabilities form a class, so finding a node costs a look at the classes, not at
every node. Pure.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# OpenJD's standard capabilities, which every node has (scheduler/wire/openjd.py maps a
# step's minimum of the first three onto the job's cores, memory and GPUs too).
VCPU = "amount.worker.vcpu"
MEMORY_MIB = "amount.worker.memory"
GPUS = "amount.worker.gpu"
GPU_MEMORY_MIB = "amount.worker.gpu.memory"
OS_FAMILY = "attr.worker.os.family"
CPU_ARCH = "attr.worker.cpu.arch"
MIB = 2**20


@dataclass(frozen=True, slots=True)
class HostRequirements:
    """An OpenJD step's ``hostRequirements``: amounts as [min, max] (max None: no bound)
    and attributes as any-of and all-of value sets, by capability name. Stored with the
    job as ``to_json`` writes it."""

    amounts: Mapping[str, tuple[float, float | None]] = field(default_factory=dict)
    any_of: Mapping[str, frozenset[str]] = field(default_factory=dict)
    all_of: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.amounts or self.any_of or self.all_of)

    def met_by(self, amounts: Mapping[str, float], attributes: Mapping[str, Iterable[str]]) -> bool:
        """Whether a host with these capabilities may run the step: every amount within
        its bounds (a host that does not report one has none of it), every attribute
        with one of ``any_of`` and all of ``all_of`` (values compared in lower case, as
        OpenJD writes its standard ones: ``linux``, ``x86_64``)."""
        for name, (low, high) in self.amounts.items():
            have = float(amounts.get(name, 0))
            if have < low or (high is not None and have > high):
                return False
        for name, wanted in self.any_of.items():
            if not wanted & lower(attributes.get(name, ())):
                return False
        return all(
            wanted <= lower(attributes.get(name, ())) for name, wanted in self.all_of.items()
        )

    def describe(self) -> str:
        needs = [
            f"{name} {low:g}" + ("+" if high is None else f"-{high:g}")
            for name, (low, high) in sorted(self.amounts.items())
        ]
        needs += [f"{name} one of {sorted(v)}" for name, v in sorted(self.any_of.items())]
        needs += [f"{name} all of {sorted(v)}" for name, v in sorted(self.all_of.items())]
        return ", ".join(needs)

    def to_json(self) -> dict[str, Any]:
        return {
            "amounts": {name: [low, high] for name, (low, high) in self.amounts.items()},
            "any_of": {name: sorted(values) for name, values in self.any_of.items()},
            "all_of": {name: sorted(values) for name, values in self.all_of.items()},
        }

    @classmethod
    def from_json(cls, stored: Mapping[str, Any] | None) -> HostRequirements:
        if not stored:
            return NO_HOST_REQUIREMENTS
        return cls(
            amounts={
                name: (float(low), None if high is None else float(high))
                for name, (low, high) in stored.get("amounts", {}).items()
            },
            any_of={name: lower(v) for name, v in stored.get("any_of", {}).items()},
            all_of={name: lower(v) for name, v in stored.get("all_of", {}).items()},
        )


NO_HOST_REQUIREMENTS = HostRequirements()


def lower(values: Iterable[str]) -> frozenset[str]:
    return frozenset(value.lower() for value in values)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a node offers OpenJD's host requirements: amounts and attribute values by
    name, the standard ones among them (``of``). Hashable: nodes alike form a class."""

    amounts: tuple[tuple[str, float], ...] = ()
    attributes: tuple[tuple[str, frozenset[str]], ...] = ()
    # Hashed once: a dispatch groups thousands of nodes by what they offer each tick.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.amounts, self.attributes)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def of(
        cls, cores: int, memory_bytes: int, gpus: int, reported: Mapping[str, Any] | None
    ) -> Capabilities:
        """A node's capabilities: those it reported (``{"amounts": {name: number},
        "attributes": {name: [values]}}``), with the standard amounts from its hardware
        where it reported none."""
        reported = reported or {}
        amounts: dict[str, float] = {
            VCPU: cores, MEMORY_MIB: memory_bytes // MIB, GPUS: gpus
        }  # fmt: skip
        for name, value in (reported.get("amounts") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                amounts[str(name)] = float(value)
        attributes = {
            str(name): lower(str(v) for v in values)
            for name, values in (reported.get("attributes") or {}).items()
            if isinstance(values, list)
        }
        return cls(tuple(sorted(amounts.items())), tuple(sorted(attributes.items())))

    def satisfy(self, needs: HostRequirements) -> bool:
        return needs.met_by(dict(self.amounts), dict(self.attributes))


@dataclass(frozen=True, slots=True)
class Requirements:
    cores: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    tags: frozenset[str] = field(default_factory=frozenset)
    host: HostRequirements = field(default_factory=HostRequirements)

    def describe(self) -> str:
        needs = []
        if self.cores:
            needs.append(f"{self.cores} cores")
        if self.memory_bytes:
            needs.append(f"{self.memory_bytes / 2**30:g} GiB of memory")
        if self.gpus:
            needs.append(f"{self.gpus} GPU(s)")
        if self.tags:
            needs.append(f"tags {sorted(self.tags)}")
        if self.host:
            needs.append(self.host.describe())
        return ", ".join(needs) or "nothing"


NO_REQUIREMENTS = Requirements()


@dataclass(frozen=True, slots=True)
class NodeView:
    """A live node as dispatch sees it: hardware, tags, and room in its queue."""

    name: str
    pool: str
    # Room in its queue when idle: its slots (``Room`` adds the pool's buffer and takes
    # off the chunks sent to it or running on it); or, made by hand, its room now.
    free: int
    cores: int = 1
    memory_bytes: int = 0
    gpus: int = 0
    tags: frozenset[str] = field(default_factory=frozenset)
    capabilities: Capabilities = field(default_factory=Capabilities)
    region: str = ""
    slots: int = 1  # its render slots
    bundle: int = 1  # chunks one message may carry to it (bundles.py)

    def hardware(self) -> Hardware:
        return (
            self.pool, self.cores, self.memory_bytes, self.gpus, self.tags, self.capabilities,
            self.region,
        )  # fmt: skip


Hardware = tuple[str, int, int, int, frozenset[str], Capabilities, str]


def matches(node: NodeView, needs: Requirements) -> bool:
    return (
        node.cores >= needs.cores
        and node.memory_bytes >= needs.memory_bytes
        and node.gpus >= needs.gpus
        and needs.tags <= node.tags
        and (not needs.host or node.capabilities.satisfy(needs.host))
    )


class NodeClass:
    """Live nodes of one pool alike in hardware, tags, capabilities and region."""

    __slots__ = ("count", "heap", "idle", "sample", "short", "slots")

    def __init__(self, sample: NodeView) -> None:
        self.sample = sample  # any one of them: what they all offer
        self.heap: list[tuple[int, str]] = []  # (-room when idle, name): a heap
        self.count = 0
        self.slots = 0
        self.idle = 0  # their room when idle, before the pool's buffer
        self.short: list[int] = []  # the room of those that have less than none


class LiveNodes:
    """The live nodes taking work, in classes of nodes alike (``NodeView.hardware``),
    each node with its room when idle (its ``free``: the roster gives its slots).

    A farm of ten thousand nodes comes in a few kinds of hardware: what dispatch asks
    (may a job ever run here, where is room, which regions) is asked of the classes.
    Kept between ticks and changed node by node (``put``, ``drop``) as nodes come, go
    or change; ``Room`` adds a tick's queue buffers and busy counts.
    """

    def __init__(self, nodes: Iterable[NodeView] = ()) -> None:
        self.classes: dict[Hardware, NodeClass] = {}
        self.views: dict[str, NodeView] = {}  # by name; ``free``: its room when idle
        for node in nodes:
            self._add(node, heap=False)
        for group in self.classes.values():
            heapq.heapify(group.heap)

    def per_pool(self) -> Counter[str]:
        """How many live nodes each pool has."""
        count: Counter[str] = Counter()
        for key, group in self.classes.items():
            count[key[0]] += group.count
        return count

    def put(self, node: NodeView) -> bool:
        """Add a node, or change what is known of it; whether anything changed."""
        known = self.views.get(node.name)
        if known == node:
            return False
        if known is not None:
            self.drop(node.name)
        self._add(node, heap=True)
        return True

    def drop(self, name: str) -> bool:
        """Forget a node (lost, drained, disabled); whether it was known."""
        node = self.views.pop(name, None)
        if node is None:
            return False
        key = node.hardware()
        group = self.classes[key]
        group.heap.remove((-node.free, name))
        heapq.heapify(group.heap)
        group.count -= 1
        group.slots -= node.slots
        if node.free >= 0:
            group.idle -= node.free
        else:
            group.short.remove(node.free)
        if not group.count:
            del self.classes[key]
        return True

    def _add(self, node: NodeView, heap: bool) -> None:
        key = node.hardware()
        group = self.classes.get(key)
        if group is None:
            group = self.classes[key] = NodeClass(node)
        if heap:
            heapq.heappush(group.heap, (-node.free, node.name))
        else:
            group.heap.append((-node.free, node.name))
        group.count += 1
        group.slots += node.slots
        if node.free >= 0:
            group.idle += node.free
        else:
            group.short.append(node.free)
        self.views[node.name] = node


class Room:
    """Room in the live nodes' queues during one tick: each node's room when idle,
    plus its share of its pool's queue buffer (``buffers``), less the chunks sent to
    it or running on it (``busy``). Costs the classes and the busy nodes to make.
    It reads ``live`` as it is: use it (and its ``Placement``) before ``live`` changes."""

    def __init__(
        self,
        live: LiveNodes,
        buffers: Mapping[str, int] | None = None,
        busy: Mapping[str, int] | None = None,
    ) -> None:
        self.live = live
        self.buffers = buffers or {}
        self.busy = {name: n for name, n in (busy or {}).items() if name in live.views}
        self._room: Counter[str] = Counter()
        self.busy_in: dict[Hardware, list[tuple[str, int]]] = defaultdict(list)
        for key, group in live.classes.items():
            extra = self.buffers.get(key[0], 0)
            self._room[key[0]] += group.idle + extra * (group.count - len(group.short))
            self._room[key[0]] += sum(max(0, base + extra) for base in group.short)
        for name, n in self.busy.items():
            key = live.views[name].hardware()
            self.busy_in[key].append((name, n))
            whole = live.views[name].free + self.buffers.get(key[0], 0)
            self._room[key[0]] -= max(0, whole) - max(0, whole - n)

    @classmethod
    def of(cls, nodes: Iterable[NodeView]) -> Room:
        """The room the nodes' own ``free`` says they have."""
        return cls(LiveNodes(nodes))

    def room(self, pool: str) -> int:
        return self._room.get(pool, 0)

    def pools_with_room(self) -> dict[str, int]:
        return {pool: n for pool, n in self._room.items() if n > 0}

    def can_ever_run(self, pool: str, needs: Requirements) -> bool:
        """Whether any live node of the pool matches, busy or not."""
        return any(
            key[0] == pool and matches(group.sample, needs)
            for key, group in self.live.classes.items()
        )

    def region_slots(self, pool: str) -> dict[str, int]:
        """The render slots of the pool's live nodes, by region."""
        slots: Counter[str] = Counter()
        for key, group in self.live.classes.items():
            if key[0] == pool:
                slots[key[6]] += group.slots
        return dict(slots)


class Placement:
    """Room left on each node during one tick, and the choice of a node for a chunk.

    Per class of nodes alike, a heap of (-room, name): the emptiest node of a class
    is found at once, and a chunk costs O(classes + log nodes). A class's heap is the
    one made when the nodes were read, copied when the tick first looks at the class,
    with an entry pushed for each busy node; an entry that no longer tells a node's
    room (it was busy, or took a chunk since) is dropped when it comes to the top.
    Entries hold the room less the pool's buffer, the same for the whole pool.
    """

    def __init__(self, room: Room) -> None:
        self._live = room.live
        self._buffers = room.buffers
        self._busy_in = room.busy_in
        self._room = Counter(room.pools_with_room())
        self._used: dict[str, int] = dict(room.busy)  # chunks each node holds now
        self._heaps: dict[Hardware, list[tuple[int, str]]] = {}

    def room(self, pool: str) -> int:
        return self._room.get(pool, 0)

    def place(
        self,
        pool: str,
        needs: Requirements,
        avoid: Collection[str] = (),
        prefer: Sequence[str] = (),
    ) -> str | None:
        """A matching node with room, the emptiest first; None if there is none now.
        With ``prefer`` (regions, best first: scheduler/core/siting.py), a node of an
        earlier region first, the emptiest of it; then of any other region."""
        if self._room.get(pool, 0) <= 0:
            return None
        extra = self._buffers.get(pool, 0)
        rank = {region: index for index, region in enumerate(prefer)} if prefer else {}
        best: tuple[int, int, str] | None = None
        best_heap: list[tuple[int, str]] = []
        for key, group in self._live.classes.items():
            if key[0] != pool:
                continue
            heap = self._heaps.get(key)
            if heap is None:
                heap = self._heap(key, group, extra)
            if not heap or not matches(group.sample, needs):
                continue
            top = self._first(heap, avoid, extra)
            if top is None:
                continue
            ranked = (rank.get(key[6], len(rank)), *top)
            if best is None or ranked < best:
                best, best_heap = ranked, heap
        if best is None:
            return None
        _rank, left, name = best
        heap = best_heap
        if heap[0] == (left, name):
            heapq.heappop(heap)
        else:  # the emptiest node was avoided: take the one chosen from within
            heap.remove((left, name))
            heapq.heapify(heap)
        self._used[name] = self._used.get(name, 0) + 1
        if -left - 1 + extra > 0:  # left is negated: room is left after this chunk
            heapq.heappush(heap, (left + 1, name))
        self._room[pool] -= 1
        return name

    def _heap(self, key: Hardware, group: NodeClass, extra: int) -> list[tuple[int, str]]:
        """The class's heap for this tick: as made when the nodes were read, with an
        entry for each of its busy nodes."""
        heap = self._heaps[key] = list(group.heap)
        for name, n in self._busy_in.get(key, ()):
            left = self._live.views[name].free - n
            if left + extra > 0:
                heapq.heappush(heap, (-left, name))
        return heap

    def _first(
        self, heap: list[tuple[int, str]], avoid: Collection[str], extra: int
    ) -> tuple[int, str] | None:
        """The heap's emptiest node not avoided; entries that no longer tell their
        node's room (or tell it has none) are dropped on the way."""
        views, used = self._live.views, self._used
        while heap:
            left, name = heap[0]
            now = views[name].free - used.get(name, 0)
            if -left == now and now + extra > 0:
                break
            heapq.heappop(heap)
        else:
            return None
        if not avoid or heap[0][1] not in avoid:
            return heap[0]
        allowed = []
        for left, name in heap:
            now = views[name].free - used.get(name, 0)
            if name not in avoid and -left == now and now + extra > 0:
                allowed.append((left, name))
        return min(allowed) if allowed else None
