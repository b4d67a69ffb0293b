"""Throughput of the whole farm path against bare Celery, on the same Redis, in one run.

Farm: a studio submits one job of N single-frame chunks with the ``noop`` renderer over
the REST API; the real scheduler, a real ``renderfarm worker`` and the database carry
it to ``done`` (every frame result written). Baseline: N bare Celery no-op tasks
through a worker of the same concurrency. Prints both rates and farm/celery, and the
CPU milliseconds per frame of each process (the embedded Redis, and a PostgreSQL
server on this machine when ``--database-url`` names one: it takes the same cores).

    python bench/dispatch.py                 # 5,000 frames, 5 alternating rounds, a table
    python bench/dispatch.py --json          # {"farm_frames_per_s", "celery_tasks_per_s", "ratio"}
    python bench/dispatch.py --frames 1000 --slots 4 --broker-url redis://127.0.0.1:6379/14
    python bench/dispatch.py --bundle-seconds 0   # the farm sending one chunk a message

"ratio" is the median of the rounds' ratios, each round's farm against the Celery run
just before it: on a shared machine whose speed swings between runs, a pair run
back to back shares the machine's mood, and the median of pairs is steadier than
the ratio of two medians taken minutes apart (also printed, "ratio_of_medians").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.launch.demo import studio_key
from scheduler.launch.embedded import EmbeddedRedis, LocalFarm, stop_process, wait_until
from scheduler.settings import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_client(url: str) -> redis.Redis:
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of a process and its live children (a worker's pool processes)."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def wait_for_job(
    farm: LocalFarm, client: httpx.Client, job_id: int, every: float = 0.1
) -> dict[str, Any]:
    """The job once it is done, asked every ``every`` s; a job that failed or was
    cancelled, or a farm process that died, ends the benchmark."""
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        farm.check_children()
        state: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if state["state"] in ("failed", "cancelled"):
            raise RuntimeError(f"bench job ended {state['state']}: {state['message']}")
        if state["state"] == "done":
            return state
        time.sleep(every)
    raise TimeoutError("the farm did not finish")


def studio_client(farm: LocalFarm, settings: Settings) -> httpx.Client:
    """The demo studio's client of the farm's API, once a node has reported."""
    client = httpx.Client(
        base_url=farm.api_url,
        headers={"Authorization": f"Bearer {studio_key(settings)}"},
        timeout=30,
    )
    wait_until(lambda: bool(client.get("/v1/nodes").json()), 60, "the node did not report")
    return client


def bench_farm(
    settings: Settings, frames: int, slots: int, also_measure: dict[str, psutil.Process]
) -> tuple[float, dict[str, float]]:
    """Frames per second, and CPU milliseconds per frame of each farm process."""
    with LocalFarm(settings, workers=1, slots=slots, api_port=free_port()) as farm:
        client = studio_client(farm, settings)
        processes = {
            ("node" if "-local-" in label else label): psutil.Process(c.pid)
            for label, c in farm.children
        }
        processes.update(also_measure)
        cpu_before = {label: cpu_seconds(p) for label, p in processes.items()}
        started = time.time()
        job = client.post(
            "/v1/jobs",
            json={"name": "bench", "frames": f"1-{frames}", "renderer": {"kind": "noop"}},
        ).json()
        # Asked twice a second, as a studio's page would: asking ten times a second
        # cost the API (and the database the scheduler writes) 0.25 CPU-ms a frame.
        # The rate is the farm's own: submitted to the job's finished_at, whenever asked.
        done = wait_for_job(farm, client, job["id"], every=0.5)
        elapsed = datetime.fromisoformat(done["finished_at"]).timestamp() - started
        cpu_ms = {
            label: round((cpu_seconds(p) - cpu_before[label]) / frames * 1000, 2)
            for label, p in processes.items()
        }
        progress = client.get(f"/v1/jobs/{job['id']}").json()["progress"]
        assert progress["frames_done"] == frames, progress
        return frames / elapsed, cpu_ms


def bench_celery(
    broker_url: str, frames: int, slots: int, logs: Path, also_measure: dict[str, psutil.Process]
) -> tuple[float, dict[str, float]]:
    """Tasks per second, and CPU milliseconds per task of the worker (and of Redis)."""
    os.environ.update(BENCH_BROKER_URL=broker_url, BENCH_REDIS_URL=_plain(broker_url))
    from bench import celery_noop

    counter = redis_client(broker_url)
    counter.delete(celery_noop.COUNTER)
    with celery_worker(broker_url, slots, logs) as worker:
        app = celery_noop.app
        processes = {"worker": psutil.Process(worker.pid), **also_measure}
        cpu_before = {label: cpu_seconds(p) for label, p in processes.items()}
        started = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for index in range(frames):
                celery_noop.noop.apply_async((index,), queue="bench.noop", producer=producer)
        wait_until(
            lambda: int(counter.get(celery_noop.COUNTER) or 0) >= frames,
            3600,
            "Celery did not finish",
        )
        rate = frames / (time.perf_counter() - started)
        cpu_ms = {
            label: round((cpu_seconds(p) - cpu_before[label]) / frames * 1000, 2)
            for label, p in processes.items()
        }
        return rate, cpu_ms


@contextlib.contextmanager
def celery_worker(broker_url: str, slots: int, logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A bare Celery worker of ``slots`` processes on the bench's queue, ready."""
    os.environ.update(BENCH_BROKER_URL=broker_url, BENCH_REDIS_URL=_plain(broker_url))
    env = dict(os.environ)
    from bench import celery_noop

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
        wait_until(
            lambda: bool(celery_noop.app.control.ping(timeout=0.5)),
            60,
            "the Celery worker did not start",
        )
        yield worker
    finally:
        stop_process(worker)


def local_postgres(url: str | None) -> dict[str, psutil.Process]:
    """The PostgreSQL server the farm uses, if it runs on this machine: its postmaster,
    whose children are the backends, so that the database's CPU counts too (it takes
    the same cores). {} for SQLite (in the scheduler's own process), or a remote server."""
    if url is None or urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return {}
    names = ("postgres", "postmaster")
    for process in psutil.process_iter(["name", "ppid"]):
        try:
            if (
                process.info["name"] in names
                and psutil.Process(process.info["ppid"]).name() not in names
            ):
                return {"postgres": process}
        except psutil.Error:
            continue
    return {}


def _plain(url: str) -> str:
    """redis-py's spelling of a kombu URL."""
    if url.startswith("redis+socket://"):
        return "unix://" + url.removeprefix("redis+socket://")
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--slots", type=int, default=4, help="worker concurrency, both sides")
    parser.add_argument("--rounds", type=int, default=5, help="celery and farm runs, alternated")
    parser.add_argument("--broker-url", default=None, help="default: an embedded Redis")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    parser.add_argument(
        "--bundle-seconds",
        default=None,
        help="the farm's RENDERFARM_BUNDLE_SECONDS (0: one chunk a message); default: its own",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.bundle_seconds is not None:  # the farm's processes inherit the environment
        os.environ["RENDERFARM_BUNDLE_SECONDS"] = str(float(args.bundle_seconds))

    farm_rates: list[float] = []
    celery_rates: list[float] = []
    cpu_ms: dict[str, float] = {}
    celery_cpu_ms: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="renderfarm-bench-") as folder:
        embedded = None
        broker_url = args.broker_url
        if broker_url is None:
            embedded = EmbeddedRedis()
            embedded.start()
            broker_url = embedded.url
        try:
            redis_process = (
                {"redis": psutil.Process(embedded.process.pid)}
                if embedded is not None and embedded.process is not None
                else {}
            )
            for round_ in range(args.rounds):
                # Alternate, so a machine that slows down mid-run hurts both sides alike.
                redis_client(broker_url).flushdb()
                celery_rate, celery_cpu_ms = bench_celery(
                    broker_url, args.frames, args.slots, Path(folder), redis_process
                )
                celery_rates.append(celery_rate)
                settings = Settings(
                    _env_file=None,  # type: ignore[call-arg]
                    data_dir=Path(folder) / f"round-{round_}",
                    broker_url=broker_url,
                    database_url=args.database_url,
                    max_frames_per_job=max(100_000, args.frames),
                )
                database = local_postgres(args.database_url)
                rate, cpu_ms = bench_farm(
                    settings, args.frames, args.slots, {**redis_process, **database}
                )
                farm_rates.append(rate)
                print(
                    f"round {round_ + 1}: farm {rate:.1f} frames/s, "
                    f"celery {celery_rates[-1]:.1f} tasks/s",
                    file=sys.stderr,
                )
        finally:
            if embedded is not None:
                embedded.stop()
    farm_rate, celery_rate = statistics.median(farm_rates), statistics.median(celery_rates)
    ratios = [f / c for f, c in zip(farm_rates, celery_rates, strict=True)]
    result = {
        "farm_frames_per_s": round(farm_rate, 1),
        "celery_tasks_per_s": round(celery_rate, 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "ratio_of_medians": round(farm_rate / celery_rate, 3),
        "frames": args.frames,
        "slots": args.slots,
        "farm_cpu_ms_per_frame": cpu_ms,
        "celery_cpu_ms_per_task": celery_cpu_ms,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"medians of {args.rounds} alternating rounds of {args.frames} frames/tasks")
    print(f"{'path':<34}{'per second':>12}")
    print(f"{'farm (API→scheduler→Celery→DB)':<34}{farm_rate:>12.1f}")
    print(f"{'bare Celery no-op tasks':<34}{celery_rate:>12.1f}")
    print(f"{'ratio farm / celery (median)':<34}{statistics.median(ratios):>12.3f}")
    print("ratio per round: " + ", ".join(f"{r:.3f}" for r in ratios))
    print(f"ratio of the medians: {farm_rate / celery_rate:.3f}")
    print("farm CPU ms per frame (last round): " + ", ".join(f"{k} {v}" for k, v in cpu_ms.items()))
    print(
        "celery CPU ms per task (last round): "
        + ", ".join(f"{k} {v}" for k, v in celery_cpu_ms.items())
    )


if __name__ == "__main__":
    main()
