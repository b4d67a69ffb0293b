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
    free: int  # slots + buffer - chunks dispatched to it or running on it
    cores: int = 1
    memory_bytes: int = 0
    gpus: int = 0
    tags: frozenset[str] = field(default_factory=frozenset)
    capabilities: Capabilities = field(default_factory=Capabilities)
    region: str = ""
    slots: int = 1  # its render slots (``free`` counts its queue's buffer too)

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


def can_ever_run(nodes: Iterable[NodeView], pool: str, needs: Requirements) -> bool:
    """Whether any live node of the pool matches, busy or not."""
    return any(node.pool == pool and matches(node, needs) for node in nodes)


class Placement:
    """Room left on each node during one tick, and the choice of a node for a chunk.

    Per class of identical nodes, a heap of (room left, name): the emptiest node of
    a class is found at once, and a chunk costs O(classes + log nodes).
    """

    def __init__(self, nodes: Sequence[NodeView]) -> None:
        self._heaps: dict[Hardware, list[tuple[int, str]]] = {}
        self._sample: dict[Hardware, NodeView] = {}
        self._room: dict[str, int] = {}
        for node in nodes:
            key = node.hardware()
            self._sample.setdefault(key, node)
            heap = self._heaps.setdefault(key, [])
            if node.free > 0:
                heap.append((-node.free, node.name))
                self._room[node.pool] = self._room.get(node.pool, 0) + node.free
        for heap in self._heaps.values():
            heapq.heapify(heap)

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
        rank = {region: index for index, region in enumerate(prefer)}
        best: tuple[int, int, str, list[tuple[int, str]]] | None = None
        for key, heap in self._heaps.items():
            if key[0] != pool or not heap or not matches(self._sample[key], needs):
                continue
            top = _first_not_in(heap, avoid)
            if top is None:
                continue
            ranked = (rank.get(key[6], len(rank)), *top)
            if best is None or ranked < best[:3]:
                best = (*ranked, heap)
        if best is None:
            return None
        _rank, free, name, heap = best
        if heap[0] == (free, name):
            heapq.heappop(heap)
        else:  # the emptiest node was avoided: take the one chosen from within
            heap.remove((free, name))
            heapq.heapify(heap)
        if free + 1 < 0:  # free is negated: room is left after this chunk
            heapq.heappush(heap, (free + 1, name))
        self._room[pool] -= 1
        return name


def _first_not_in(heap: list[tuple[int, str]], avoid: Collection[str]) -> tuple[int, str] | None:
    if not avoid:
        return heap[0]
    if heap[0][1] not in avoid:
        return heap[0]
    allowed = [entry for entry in heap if entry[1] not in avoid]
    return min(allowed) if allowed else None
