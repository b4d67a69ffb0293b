"""Placement: which render node a chunk goes to.

Each node has a queue of its own (``node.<name>``), kept about as deep as its free
slots plus a small buffer. A job may require a minimum of cores, memory and GPUs and
a set of tags; only matching nodes render it, and a node on which the job failed too
often is avoided (a blocklist per job). Nodes with the same hardware and tags form a
class, so finding a node costs a look at the classes, not at every node. Pure.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Requirements:
    cores: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    tags: frozenset[str] = field(default_factory=frozenset)

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

    def hardware(self) -> tuple[str, int, int, int, frozenset[str]]:
        return (self.pool, self.cores, self.memory_bytes, self.gpus, self.tags)


def matches(node: NodeView, needs: Requirements) -> bool:
    return (
        node.cores >= needs.cores
        and node.memory_bytes >= needs.memory_bytes
        and node.gpus >= needs.gpus
        and needs.tags <= node.tags
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
        self._heaps: dict[tuple[str, int, int, int, frozenset[str]], list[tuple[int, str]]] = {}
        self._sample: dict[tuple[str, int, int, int, frozenset[str]], NodeView] = {}
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

    def place(self, pool: str, needs: Requirements, avoid: Collection[str] = ()) -> str | None:
        """A matching node with room, the emptiest first; None if there is none now."""
        best: tuple[int, str, list[tuple[int, str]]] | None = None
        for key, heap in self._heaps.items():
            if key[0] != pool or not heap or not matches(self._sample[key], needs):
                continue
            top = _first_not_in(heap, avoid)
            if top is not None and (best is None or top < best[:2]):
                best = (*top, heap)
        if best is None:
            return None
        free, name, heap = best
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
