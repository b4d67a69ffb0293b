"""Throughput of the whole farm path against bare Celery, on the same Redis, in one run.

Farm: a studio submits one job of N single-frame chunks with the ``noop`` renderer over
the REST API; the real scheduler, a real ``renderfarm worker`` and the database carry
it to ``done`` (every frame result written). Baseline: N bare Celery no-op tasks
through a worker of the same concurrency. Prints both rates and farm/celery.

    python bench/dispatch.py                 # 5,000 frames, a table
    python bench/dispatch.py --json          # {"farm_frames_per_s", "celery_tasks_per_s", "ratio"}
    python bench/dispatch.py --frames 1000 --slots 4 --broker-url redis://127.0.0.1:6379/14
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.demo import studio_key
from scheduler.embedded import EmbeddedRedis, LocalFarm, stop_process, wait_until
from scheduler.settings import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_client(url: str) -> redis.Redis:
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


def bench_farm(settings: Settings, frames: int, slots: int) -> float:
    with LocalFarm(settings, workers=1, slots=slots, api_port=free_port()) as farm:
        client = httpx.Client(
            base_url=farm.api_url,
            headers={"Authorization": f"Bearer {studio_key(settings)}"},
            timeout=30,
        )
        wait_until(lambda: bool(client.get("/v1/nodes").json()), 60, "the node did not report")
        started = time.perf_counter()
        job = client.post(
            "/v1/jobs",
            json={"name": "bench", "frames": f"1-{frames}", "renderer": {"kind": "noop"}},
        ).json()

        def done() -> bool:
            farm.check_children()
            state = client.get(f"/v1/jobs/{job['id']}").json()
            if state["state"] in ("failed", "cancelled"):
                raise RuntimeError(f"bench job ended {state['state']}: {state['message']}")
            return bool(state["state"] == "done")

        wait_until(done, 3600, "the farm did not finish")
        elapsed = time.perf_counter() - started
        progress = client.get(f"/v1/jobs/{job['id']}").json()["progress"]
        assert progress["frames_done"] == frames, progress
        return frames / elapsed


def bench_celery(broker_url: str, frames: int, slots: int, logs: Path) -> float:
    os.environ.update(BENCH_BROKER_URL=broker_url, BENCH_REDIS_URL=_plain(broker_url))
    env = dict(os.environ)
    from bench import celery_noop

    counter = redis_client(broker_url)
    counter.delete(celery_noop.COUNTER)
    with open(logs / "celery-noop.log", "ab") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.celery_noop",
                "worker",
                f"--concurrency={slots}",
                "--pool=prefork",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=WARNING",
                "-Q",
                "bench.noop",
                f"--hostname=bench-noop-{os.getpid()}@%h",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    try:
        app = celery_noop.app
        wait_until(
            lambda: bool(app.control.ping(timeout=0.5)), 60, "the Celery worker did not start"
        )
        started = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for index in range(frames):
                celery_noop.noop.apply_async((index,), queue="bench.noop", producer=producer)
        wait_until(
            lambda: int(counter.get(celery_noop.COUNTER) or 0) >= frames,
            3600,
            "Celery did not finish",
        )
        return frames / (time.perf_counter() - started)
    finally:
        stop_process(worker)


def _plain(url: str) -> str:
    """redis-py's spelling of a kombu URL."""
    if url.startswith("redis+socket://"):
        return "unix://" + url.removeprefix("redis+socket://")
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--slots", type=int, default=4, help="worker concurrency, both sides")
    parser.add_argument("--broker-url", default=None, help="default: an embedded Redis")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="renderfarm-bench-") as folder:
        embedded = None
        broker_url = args.broker_url
        if broker_url is None:
            embedded = EmbeddedRedis()
            embedded.start()
            broker_url = embedded.url
        try:
            redis_client(broker_url).flushdb()
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                data_dir=Path(folder),
                broker_url=broker_url,
                database_url=args.database_url,
                max_frames_per_job=max(100_000, args.frames),
            )
            farm_rate = bench_farm(settings, args.frames, args.slots)
            print(f"farm: {farm_rate:.1f} frames/s", file=sys.stderr)
            celery_rate = bench_celery(broker_url, args.frames, args.slots, Path(folder))
        finally:
            if embedded is not None:
                embedded.stop()
    result = {
        "farm_frames_per_s": round(farm_rate, 1),
        "celery_tasks_per_s": round(celery_rate, 1),
        "ratio": round(farm_rate / celery_rate, 3),
        "frames": args.frames,
        "slots": args.slots,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'path':<34}{'per second':>12}")
    print(f"{'farm (API→scheduler→Celery→DB)':<34}{farm_rate:>12.1f}")
    print(f"{'bare Celery no-op tasks':<34}{celery_rate:>12.1f}")
    print(f"{'ratio farm / celery':<34}{farm_rate / celery_rate:>12.3f}")


if __name__ == "__main__":
    main()
