"""A render node alone against a bare Celery worker: the farm's cost per chunk on the node.

bench/dispatch.py measures the whole farm path; this takes the scheduler and the
database out of it. N no-op single-frame chunk messages (as the scheduler would send
them) are queued on a node's queue before a real ``renderfarm worker`` starts on it;
N bare Celery no-op tasks are queued before a bare worker of the same concurrency
starts. Each drains its queue; the rate is timed from the first completion to the last
(so neither's start-up counts), with the CPU of each worker's main process (its Celery
consumer) and of its pool over the same span. Rounds alternate.

    python bench/node.py --json      # {"node_chunks_per_s", "celery_tasks_per_s", "ratio", ...}
    python bench/node.py --chunks 8000 --rounds 5
    python bench/node.py --bundle 8  # the node's chunks eight to a message
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dispatch import _plain, celery_worker, redis_client
from scheduler.launch.embedded import EmbeddedRedis, stop_process
from scheduler.settings import Settings
from scheduler.wire.broker import CeleryBroker
from scheduler.wire.celery_app import make_celery
from scheduler.wire.events import EVENTS_KEY
from scheduler.wire.messages import ChunkMessage

NODE = "bench-node"
POLL = 0.005  # seconds between looks at the counts


def drain(
    done: Callable[[], int], total: int, processes: Callable[[], dict[str, psutil.Process]]
) -> tuple[float, dict[str, float]]:
    """Per second from the first completion to the ``total``-th, and CPU-ms per item of
    each process over that span."""
    deadline = time.monotonic() + 600
    while done() < 1:
        if time.monotonic() > deadline:
            raise TimeoutError("nothing completed")
        time.sleep(POLL)
    first, started = done(), time.perf_counter()
    watched = processes()
    before = {label: _cpu(p) for label, p in watched.items()}
    while (count := done()) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} of {total} completed")
        time.sleep(POLL)
    elapsed = time.perf_counter() - started
    items = total - first
    cpu_ms = {
        label: round((_cpu(p) - before[label]) / items * 1000, 3) for label, p in watched.items()
    }
    return items / elapsed, cpu_ms


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def main_and_pool(pid: int) -> dict[str, psutil.Process]:
    """A worker's main process and its pool's processes (each slot a ``pool-N``)."""
    main = psutil.Process(pid)
    children = main.children(recursive=True)
    return {"main": main, **{f"pool-{i}": child for i, child in enumerate(children)}}


def noop_chunk(index: int) -> ChunkMessage:
    """Chunk ``index`` of job 1: frame ``index``, the no-op renderer, on the bench's node."""
    return ChunkMessage(
        chunk_id=index,
        attempt=1,
        job_id=1,
        pool="cpu",
        frames=[index],
        renderer="noop",
        settings={},
        output_pattern="jobs/1/frames/{frame}.png",
        log_path=f"jobs/1/logs/chunk-{index}.log",
        timeout=60.0,
        node=NODE,
    )


def bench_node(
    settings: Settings, chunks: int, slots: int, logs: Path, bundle: int = 1
) -> tuple[float, dict]:
    """A real node draining ``chunks`` no-op chunks queued before it started, ``bundle``
    to a message (as the scheduler sends a job's chunks of milliseconds)."""
    client = redis_client(settings.effective_broker_url)
    client.delete(EVENTS_KEY)
    messages = [noop_chunk(index) for index in range(1, chunks + 1)]
    app = make_celery(settings)
    broker = CeleryBroker(app)
    grouped = [messages[start : start + bundle] for start in range(0, chunks, bundle)]
    for start in range(0, len(grouped), 1000):
        broker.send(grouped[start : start + 1000])
    env = {
        **os.environ,
        "RENDERFARM_BROKER_URL": settings.effective_broker_url,
        "RENDERFARM_DATA_DIR": str(settings.data_dir),
        "RENDERFARM_HEARTBEAT_SECONDS": "3600",  # one beat: the events list counts chunks
    }
    with open(logs / "node.log", "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "scheduler.launch.cli", "worker", "--pool", "cpu",
             "--slots", str(slots), "--name", NODE, "--energy-meter", "model"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        # The first heartbeat is in the list too (at most one: a beat an hour).
        rate, cpu_ms = drain(
            lambda: max(0, int(client.llen(EVENTS_KEY)) - 1),
            chunks,
            lambda: main_and_pool(worker.pid),
        )
        finished = sum(1 for item in client.lrange(EVENTS_KEY, 0, -1) if b'"finished"' in item)
        assert finished == chunks, f"{finished} chunks finished of {chunks}"
        return rate, cpu_ms
    finally:
        stop_process(worker)
        app.close()


def bench_celery(broker_url: str, tasks: int, slots: int, logs: Path) -> tuple[float, dict]:
    """A bare Celery worker draining ``tasks`` no-op tasks queued before it started."""
    os.environ.update(BENCH_BROKER_URL=broker_url, BENCH_REDIS_URL=_plain(broker_url))
    from bench import celery_noop

    counter = redis_client(broker_url)
    counter.delete(celery_noop.COUNTER)
    with celery_noop.app.producer_or_acquire() as producer:
        for index in range(tasks):
            celery_noop.noop.apply_async((index,), queue="bench.noop", producer=producer)
    with celery_worker(broker_url, slots, logs) as worker:
        return drain(
            lambda: int(counter.get(celery_noop.COUNTER) or 0),
            tasks,
            lambda: main_and_pool(worker.pid),
        )


def summed(cpu_ms: dict[str, float]) -> dict[str, float]:
    """The main process's CPU-ms per item, and the pool's, summed over its processes."""
    pool = sum(v for k, v in cpu_ms.items() if k.startswith("pool-"))
    return {"main": cpu_ms.get("main", 0.0), "pool": round(pool, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=6000)
    parser.add_argument("--slots", type=int, default=4, help="worker concurrency, both sides")
    parser.add_argument("--rounds", type=int, default=3, help="celery and node runs, alternated")
    parser.add_argument("--bundle", type=int, default=1, help="chunks a message, the node's")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    node_rates: list[float] = []
    celery_rates: list[float] = []
    ratios: list[float] = []
    node_cpu: dict[str, Any] = {}
    celery_cpu: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="renderfarm-bench-node-") as folder:
        redis = EmbeddedRedis()
        redis.start()
        try:
            for round_ in range(args.rounds):
                redis_client(redis.url).flushdb()
                celery_rate, celery_cpu = bench_celery(
                    redis.url, args.chunks, args.slots, Path(folder)
                )
                redis_client(redis.url).flushdb()
                settings = Settings(
                    _env_file=None,  # type: ignore[call-arg]
                    data_dir=Path(folder) / f"round-{round_}",
                    broker_url=redis.url,
                )
                node_rate, node_cpu = bench_node(
                    settings, args.chunks, args.slots, Path(folder), args.bundle
                )
                celery_rates.append(celery_rate)
                node_rates.append(node_rate)
                ratios.append(node_rate / celery_rate)
                print(
                    f"round {round_ + 1}: node {node_rate:.1f} chunks/s, "
                    f"celery {celery_rate:.1f} tasks/s",
                    file=sys.stderr,
                )
        finally:
            redis.stop()
    result = {
        "node_chunks_per_s": round(statistics.median(node_rates), 1),
        "celery_tasks_per_s": round(statistics.median(celery_rates), 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "chunks": args.chunks,
        "bundle": args.bundle,
        "slots": args.slots,
        "node_cpu_ms_per_chunk": summed(node_cpu),
        "celery_cpu_ms_per_task": summed(celery_cpu),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"medians of {args.rounds} alternating rounds of {args.chunks} queued chunks/tasks, "
          f"the node's {args.bundle} a message")  # fmt: skip
    print(f"node {result['node_chunks_per_s']} chunks/s, celery {result['celery_tasks_per_s']}")
    print(f"ratio node / celery (median of rounds): {result['ratio']}")
    print(f"CPU ms per item (last round): node {result['node_cpu_ms_per_chunk']}, "
          f"celery {result['celery_cpu_ms_per_task']}")  # fmt: skip


if __name__ == "__main__":
    main()
