"""Submit to first frame: how soon an idle farm starts rendering a new job, against how
soon bare Celery starts a task, on the same Redis, in one run.

Farm: a studio submits a job of one ``noop`` frame over the REST API to an embedded farm
whose nodes are idle, and waits for it to finish before the next; the latency is from
just before the POST to the moment the node began the attempt (the attempt's
``started_at``, stamped by the node as it starts the render). Floor: ``apply_async`` of a
bare Celery task to the moment its body starts (it stamps itself), through a worker of
the same concurrency. Both clocks are this machine's.

    python bench/latency.py                # 200 jobs, 200 tasks: p50, p90, p99, max
    python bench/latency.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select
from sqlmodel import Session, col

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dispatch import celery_worker, free_port, redis_client, studio_client
from scheduler.db import AttemptRow, make_engine
from scheduler.launch.embedded import EmbeddedRedis, LocalFarm, wait_until
from scheduler.settings import Settings


def quantiles(samples: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max, in milliseconds."""
    ordered = sorted(samples)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_ms": round(cut[49] * 1000, 1),
        "p90_ms": round(cut[89] * 1000, 1),
        "p99_ms": round(cut[98] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def farm_latencies(settings: Settings, jobs: int, slots: int) -> list[float]:
    with LocalFarm(settings, workers=1, slots=slots, api_port=free_port()) as farm:
        client = studio_client(farm, settings)
        engine = make_engine(settings.effective_database_url)
        found = []
        for n in range(jobs + 1):
            sent_at = time.time()
            job = client.post(
                "/v1/jobs", json={"name": f"l{n}", "frames": "1", "renderer": {"kind": "noop"}}
            ).json()
            wait_until(
                lambda job=job: client.get(f"/v1/jobs/{job['id']}").json()["state"] == "done",
                60,
                "a job did not finish",
            )
            with Session(engine) as session:
                started = session.execute(
                    select(col(AttemptRow.started_at)).where(col(AttemptRow.job_id) == job["id"])
                ).scalar_one()
            if n:  # the first warms the API's and the node's caches
                found.append(started - sent_at)
            time.sleep(0.05)  # idle nodes again, the scheduler back waiting on its list
        engine.dispose()
        return found


def celery_latencies(broker_url: str, tasks: int, slots: int, logs: Path) -> list[float]:
    stamps = redis_client(broker_url)
    with celery_worker(broker_url, slots, logs):
        from bench import celery_noop  # configured by celery_worker

        stamps.delete(celery_noop.STAMPS)
        for n in range(tasks + 1):
            celery_noop.stamp.apply_async((time.time(),), queue="bench.noop")
            wait_until(lambda n=n: stamps.llen(celery_noop.STAMPS) > n, 60, "no stamp")
            time.sleep(0.05)
        return [float(s) for s in stamps.lrange(celery_noop.STAMPS, 1, -1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs, and as many Celery tasks")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="renderfarm-bench-") as folder:
        embedded = EmbeddedRedis()
        embedded.start()
        try:
            floor = celery_latencies(embedded.url, args.jobs, args.slots, Path(folder))
            redis_client(embedded.url).flushdb()
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                data_dir=Path(folder) / "farm",
                broker_url=embedded.url,
            )
            farm = farm_latencies(settings, args.jobs, args.slots)
        finally:
            embedded.stop()
    result = {
        "farm_submit_to_start": quantiles(farm),
        "celery_apply_to_start": quantiles(floor),
        "jobs": args.jobs,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'':<28}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for label, key in (("farm: submit -> render", "farm_submit_to_start"),
                       ("celery: apply -> task", "celery_apply_to_start")):  # fmt: skip
        q = result[key]
        assert isinstance(q, dict)
        print(f"{label:<28}{q['p50_ms']:>9}{q['p90_ms']:>9}{q['p99_ms']:>9}{q['max_ms']:>9}")


if __name__ == "__main__":
    main()
