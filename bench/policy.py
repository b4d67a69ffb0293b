"""Time of one dispatch decision (the pure policy) as the farm grows.

For 10, 1,000 and 10,000 active jobs (from up to 50 studios of random weights) and
10, 1,000 and 10,000 nodes of 4 slots, with 90% of the slots busy, it times
``plan_dispatch`` plus ``passes_after`` on the snapshot a tick would load (each job's
next queued chunks), and prints the time per decision and per dispatched chunk, and
the ratio of the largest farm's time per chunk to the smallest's.

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

from scheduler.core.policy import (
    DispatchSnapshot,
    JobCandidate,
    PoolCapacity,
    QueuedChunk,
    passes_after,
    plan_dispatch,
)

SLOTS_PER_NODE = 4
QUEUED_PER_JOB = 8


def snapshot_for(jobs: int, nodes: int, rng: random.Random) -> DispatchSnapshot:
    studios = list(range(1, min(50, jobs) + 1))
    slots = nodes * SLOTS_PER_NODE
    busy = int(slots * 0.9)
    candidates = []
    next_chunk = 1
    for job_id in range(1, jobs + 1):
        queued = tuple(QueuedChunk(next_chunk + i, 0) for i in range(QUEUED_PER_JOB))
        next_chunk += QUEUED_PER_JOB
        candidates.append(
            JobCandidate(job_id, rng.choice(studios), rng.randint(0, 100), "cpu", queued)
        )
    active = {(s, "cpu"): busy // len(studios) for s in studios}
    return DispatchSnapshot(
        {"cpu": PoolCapacity("cpu", slots, busy, buffer=2)},
        candidates,
        active=active,
        weights={s: rng.uniform(1, 5) for s in studios},
        passes={(s, "cpu"): rng.uniform(0, 10) for s in studios},
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
