"""Time of one dispatch decision (the pure policy) as the farm grows.

For 10, 1,000 and 10,000 active jobs (from up to 50 studios of random weights, a
quarter each needing nothing, 32 cores, a Houdini tag, or a GPU with Blender) and
10, 1,000 and 10,000 nodes of 4 slots (four kinds of hardware; 90% of them busy),
it times ``plan_dispatch`` (fair share, priorities, placement on nodes) plus
``passes_after`` on the snapshot a tick would load (each job's next queued chunks),
and prints the time per decision and per dispatched chunk, and the ratio of the
largest farm's time per chunk to the smallest's.

    python bench/policy.py            # a table
    python bench/policy.py --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.core.placement import NodeView, Requirements, Room
from scheduler.core.policy import (
    DispatchSnapshot,
    JobCandidate,
    QueuedChunk,
    passes_after,
    plan_dispatch,
)

SLOTS_PER_NODE = 4
QUEUED_PER_JOB = 8


HARDWARE = [  # four kinds of node, as a farm bought them over the years
    {"cores": 16, "memory_bytes": 64 << 30, "gpus": 0, "tags": frozenset()},
    {"cores": 32, "memory_bytes": 128 << 30, "gpus": 0, "tags": frozenset({"houdini-20"})},
    {"cores": 64, "memory_bytes": 256 << 30, "gpus": 0, "tags": frozenset({"houdini-20"})},
    {"cores": 32, "memory_bytes": 256 << 30, "gpus": 2, "tags": frozenset({"blender-4.5"})},
]
NEEDS = [
    Requirements(),
    Requirements(cores=32),
    Requirements(tags=frozenset({"houdini-20"})),
    Requirements(gpus=1, tags=frozenset({"blender-4.5"})),
]


def snapshot_for(jobs: int, nodes: int, rng: random.Random) -> DispatchSnapshot:
    """Jobs of many studios with mixed requirements; nodes of four kinds, 90% busy."""
    studios = list(range(1, min(50, jobs) + 1))
    views = []
    for index in range(nodes):
        free = SLOTS_PER_NODE + 2 if rng.random() < 0.1 else 0  # 10% idle, with a buffer
        views.append(NodeView(f"node-{index}", "cpu", free, **HARDWARE[index % 4]))  # type: ignore[arg-type]
    busy = (nodes - sum(1 for v in views if v.free)) * SLOTS_PER_NODE
    candidates = []
    next_chunk = 1
    for job_id in range(1, jobs + 1):
        queued = tuple(QueuedChunk(next_chunk + i, 0) for i in range(QUEUED_PER_JOB))
        next_chunk += QUEUED_PER_JOB
        candidates.append(
            JobCandidate(
                job_id, rng.choice(studios), rng.randint(0, 100), "cpu", queued,
                needs=rng.choice(NEEDS),
            )
        )  # fmt: skip
    active = {(s, "cpu"): busy // len(studios) for s in studios}
    return DispatchSnapshot(
        candidates,
        active=active,
        weights={s: rng.uniform(1, 5) for s in studios},
        passes={(s, "cpu"): rng.uniform(0, 10) for s in studios},
        room=Room.of(views),
    )


def measure(jobs: int, nodes: int, repeats: int) -> dict[str, float]:
    snapshot = snapshot_for(jobs, nodes, random.Random(jobs * 7919 + nodes))
    times = []
    dispatched = 0
    for _ in range(repeats):
        started = time.perf_counter()
        plan = plan_dispatch(snapshot, 0.0)
        passes_after(snapshot, plan)
        times.append(time.perf_counter() - started)
        dispatched = len(plan)
    decision = statistics.median(times)
    return {
        "jobs": jobs,
        "nodes": nodes,
        "dispatched": dispatched,
        "ms_per_decision": round(decision * 1000, 3),
        "us_per_chunk": round(decision / max(dispatched, 1) * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [measure(j, n, args.repeats) for j in (10, 1_000, 10_000) for n in (10, 1_000, 10_000)]
    ratio = rows[-1]["us_per_chunk"] / rows[0]["us_per_chunk"]
    if args.json:
        print(json.dumps({"rows": rows, "largest_over_smallest_per_chunk": round(ratio, 2)}))
        return
    print(f"{'jobs':>7}{'nodes':>8}{'chunks sent':>13}{'ms/decision':>13}{'us/chunk':>10}")
    for row in rows:
        print(
            f"{row['jobs']:>7}{row['nodes']:>8}{row['dispatched']:>13}"
            f"{row['ms_per_decision']:>13.3f}{row['us_per_chunk']:>10.2f}"
        )
    print(f"time per chunk, largest farm / smallest: {ratio:.2f}")


if __name__ == "__main__":
    main()
