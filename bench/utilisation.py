"""Utilisation: with a backlog of one-second frames, the share of the slots' time spent
rendering, from the renderers' own start and end times.

An embedded farm of one node with four slots renders a job of ``--frames`` frames of the
``noop`` renderer sleeping ``--seconds`` each (single-frame chunks, submitted at once:
a backlog from the start). Each frame's render ends when its attempt reports it
(``finished_at``) and began ``render_seconds`` (the renderer's own timing) earlier.
Utilisation is the frames' render time over the slots' time from the first render's
start to the last one's end; what is missing is the farm's gaps between renders.

    python bench/utilisation.py            # 120 frames of 1 s on 4 slots (about 30 s)
    python bench/utilisation.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlmodel import Session, col

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dispatch import free_port, studio_client, wait_for_job
from scheduler.db import FrameResultRow, make_engine
from scheduler.launch.embedded import LocalFarm
from scheduler.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--seconds", type=float, default=1.0, help="each frame's render")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="renderfarm-bench-") as folder:
        settings = Settings(_env_file=None, data_dir=Path(folder))  # type: ignore[call-arg]
        with LocalFarm(settings, workers=1, slots=args.slots, api_port=free_port()) as farm:
            client = studio_client(farm, settings)
            renderer = {"kind": "noop", "sleep": args.seconds}
            job = client.post(
                "/v1/jobs",
                json={"name": "backlog", "frames": f"1-{args.frames}", "renderer": renderer},
            ).json()
            wait_for_job(farm, client, job["id"])
            engine = make_engine(settings.effective_database_url)
            with Session(engine) as session:
                timing = select(col(FrameResultRow.finished_at), col(FrameResultRow.render_seconds))
                rows = session.execute(timing.where(col(FrameResultRow.job_id) == job["id"])).all()
            engine.dispose()
    renders = [(end - seconds, end) for end, seconds in rows]
    span = max(end for _, end in renders) - min(start for start, _ in renders)
    rendering = sum(end - start for start, end in renders)
    idle = args.slots * span - rendering
    result = {
        "utilisation": round(rendering / (args.slots * span), 4),
        "frames": len(renders),
        "slots": args.slots,
        "frame_seconds": args.seconds,
        "span_seconds": round(span, 2),
        "ideal_span_seconds": round(rendering / args.slots, 2),
        "mean_gap_ms": round(idle / len(renders) * 1000, 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:<20}{value}")


if __name__ == "__main__":
    main()
