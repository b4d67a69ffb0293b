"""The farm on many hosts against the same farm in one namespace: what the network costs.

Both farms are tests/hosts.py's: the API, the scheduler, Redis and a PostgreSQL cluster
on a "core" network namespace; two render nodes of one slot each, with folders of their
own (scenes and frames over HTTP with the node token). Spread: each node on a "west"
host of its own, 15 ms from the core each way (a delaying relay: 30 ms round trips, as
from Guizhou to the east coast), the studio's client on an "east" host as far. Together:
the nodes and the client on the core, no delay. The same jobs on each, in turn, in one
run; frames/s from the submission to the job's last chunk done (read in the database).

- ``noop``: chunks that take no time, one frame each: the farm's own round trips;
- ``builtin``: the built-in ray tracer at 320x180: a render of about a second a frame.

Needs root (network namespaces) and PostgreSQL's server binaries (initdb, pg_ctl).

    sudo python bench/hosts.py                 # 2 rounds, a table
    sudo python bench/hosts.py --rounds 3 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session, select

from scheduler.db import ChunkRow
from tests.hosts import Farm, can_make_hosts, host_farm

JOBS = {"noop": ("1-200", "noop"), "builtin": ("1-24", "builtin")}


def frames_per_second(farm: Farm, frames: str, kind: str) -> float:
    first, last = (int(x) for x in frames.split("-"))
    started = time.perf_counter()
    job_id = farm.submit(frames, width=320, renderer=kind)
    while True:
        with Session(farm.engine) as session:
            states = set(session.exec(select(ChunkRow.state).where(ChunkRow.job_id == job_id)))
        if states == {"done"}:
            return (last - first + 1) / (time.perf_counter() - started)
        if states & {"failed", "cancelled"}:
            raise RuntimeError(f"job {job_id} ended {states}")
        time.sleep(0.05)


def measure(spread: bool) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-hosts-") as folder,
        host_farm(Path(folder) / "farm", spread=spread) as farm,
    ):
        frames_per_second(farm, "1-4", "noop")  # warm: scenes, imports, connections
        return {name: frames_per_second(farm, *job) for name, job in JOBS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    why = can_make_hosts()
    if why is not None:
        sys.exit(f"cannot make test hosts: {why}")
    runs: dict[str, dict[str, list[float]]] = {"together": {}, "spread": {}}
    for _ in range(args.rounds):
        for layout in ("together", "spread"):  # in turn: the machine's drift hits both
            for name, value in measure(layout == "spread").items():
                runs[layout].setdefault(name, []).append(value)
    report = {
        name: {
            "together_frames_per_s": statistics.median(runs["together"][name]),
            "spread_frames_per_s": statistics.median(runs["spread"][name]),
            "spread_over_together": statistics.median(runs["spread"][name])
            / statistics.median(runs["together"][name]),
            "rounds": {layout: runs[layout][name] for layout in runs},
        }
        for name in JOBS
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'job':10} {'together f/s':>14} {'spread f/s':>12} {'ratio':>7}")
    for name, row in report.items():
        print(f"{name:10} {row['together_frames_per_s']:14.2f} "
              f"{row['spread_frames_per_s']:12.2f} {row['spread_over_together']:7.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
