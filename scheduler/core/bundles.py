"""Which chunks travel together: several to one message when they render in milliseconds.

A Celery message costs a node about the same whatever it carries: receiving, reserving,
handing to a slot, acknowledging (BENCHMARKS.md, issue 14: bare Celery drains ~1,660
messages a second on two cores, and ~6,100 units a second at four units a message). A
job whose chunks each hold a slot for a millisecond is bound by that cost, not by
rendering. So a job's chunks placed on the same node in one dispatch go as one message
of up to ``bundle_size`` chunks, which one slot renders in turn, each its own attempt.

Only chunks known to be short are bundled: a job's pace is read from the chunks of it
that rendered (``JobPace``), and until ``JobPace.SEEN`` have, its chunks go one to a
message. A bundle is at most ``seconds`` long by the slowest of the job's latest
chunks, so bundling delays a frame's start by no more than that; a node gets at least
as many messages as it has slots, so bundling never leaves a slot idle that one chunk
a message would have filled; and no node gets more to a message than it said it takes
(a node of an older renderfarm: one). A job's pace can change (title cards, then the
action): a bundle still running after a second gives the chunks it has not started
back to its node's queue, one a message (workers/runner.py, ``run_messages``).

Revoking: each attempt records the bundle that carried it, and the bundle is revoked
once none of its attempts is still open (scheduler/dispatch/reconciling.py): a
cancelled job's bundles stop, rendering or queued, and one carrying a chunk still
wanted goes on. Every attempt is revoked by its own id too, so a chunk handed back
is stopped as any.

Pure: the caller gives ``now`` and what rendered.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence


class JobPace:
    """How long each job's latest chunks held their slots."""

    SEEN = 8  # chunks of a job rendered before its pace is trusted
    KEEP = 300.0  # seconds: a job silent this long is forgotten (done, or stopped)

    def __init__(self) -> None:
        self._held: dict[int, deque[float]] = {}
        self._heard: dict[int, float] = {}  # when each job last rendered a chunk
        self._pruned = -math.inf

    def record(self, now: float, held: Mapping[int, Sequence[float]]) -> None:
        """Chunks rendered, by job: the seconds each held its slot."""
        for job, seconds in held.items():
            if seconds:
                self._held.setdefault(job, deque(maxlen=self.SEEN)).extend(seconds)
                self._heard[job] = now
        if now - self._pruned >= self.KEEP:
            self._pruned = now
            for job in [job for job, last in self._heard.items() if now - last > self.KEEP]:
                del self._held[job], self._heard[job]

    def bundle_size(self, job: int, seconds: float, most: int) -> int:
        """How many of the job's chunks one message may carry: as many as its slowest
        latest chunk fits in ``seconds``, at most ``most``; one until its pace is known."""
        held = self._held.get(job)
        if seconds <= 0 or held is None or len(held) < self.SEEN:
            return 1
        return max(1, min(most, int(seconds / max(max(held), 1e-6))))


def bundle_groups(
    placed: Sequence[tuple[str, int]],
    size_of: Callable[[str, int], int],
    slots_of: Callable[[str], int],
) -> list[list[int]]:
    """The messages that send ``placed`` (each chunk's node and job, in dispatch order),
    as lists of indices into it: a node's chunks of one job, split into as few messages
    as ``size_of(node, job)`` allows but no fewer than the node's slots (while there
    are chunks for them), evenly; messages in the order of their first chunk."""
    together: dict[tuple[str, int], list[int]] = defaultdict(list)
    for index, key in enumerate(placed):
        together[key].append(index)
    groups: list[list[int]] = []
    for (node, job), indices in together.items():
        size = size_of(node, job)
        if size <= 1 or len(indices) == 1:
            groups += [[i] for i in indices]
            continue
        count = max(math.ceil(len(indices) / size), min(len(indices), slots_of(node)))
        base, extra = divmod(len(indices), count)
        start = 0
        for n in range(count):
            end = start + base + (n < extra)
            groups.append(indices[start:end])
            start = end
    groups.sort(key=lambda group: group[0])
    return groups
