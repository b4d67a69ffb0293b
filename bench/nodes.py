"""Ten thousand nodes on one scheduler: its CPU, its turns, and how soon it notices a
silent node, with simulated nodes.

A load generator plays ``--nodes`` render nodes (no render processes): each sends its
heartbeat every ``heartbeat_seconds`` (the farm's own interval, 5 s), spread evenly over
the interval, listing the attempts it holds; it takes the chunk messages the scheduler
sends to its queue (the Celery messages, read straight from Redis), "renders" each for
``--render-seconds`` and reports it finished. Studios submit a job of
``--frames-per-second`` frames every second. The real ``renderfarm scheduler`` runs as a
process on an embedded Redis and the database (SQLite, or ``--database-url``).

After a warm-up, the scheduler's CPU is measured over ``--window`` seconds (cores), and
from its own metrics its loop turns (``renderfarm_scheduler_tick_seconds``: ingest a
batch, reconcile, maybe dispatch) and its dispatch ticks
(``renderfarm_scheduler_dispatch_seconds``): how many, the share under 100 ms, the
mean. Then ``--silenced`` nodes stop at once (no heartbeat, no event): the bench waits
until the scheduler has marked each lost and reports how long after its last heartbeat
that was, against ``RENDERFARM_NODE_TIMEOUT``.

    python bench/nodes.py                   # 10,000 nodes, 60 s node timeout (~2.5 min)
    python bench/nodes.py --nodes 2000 --node-timeout 20 --json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlmodel import Session, col

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dispatch import cpu_seconds, free_port, redis_client
from scheduler.db import NodeRow, create_tables, make_engine
from scheduler.launch.embedded import EmbeddedRedis, stop_process, wait_until
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from scheduler.wire.events import EVENTS_KEY
from scheduler.wire.messages import NodeReport, node_queue, task_id_for

TICK = 0.1  # the load generator's step, seconds
TURNS = "renderfarm_scheduler_tick_seconds"  # the scheduler's loop turns
TICKS = "renderfarm_scheduler_dispatch_seconds"  # its dispatch ticks


class SimulatedNodes:
    """The nodes' side: heartbeats, taking chunk messages, finishing them."""

    def __init__(
        self, broker_url: str, count: int, heartbeat: float, render: float, slots: int = 4
    ) -> None:
        self.redis = redis_client(broker_url)
        self.names = [f"sim-{i:05d}" for i in range(count)]
        self.heartbeat = heartbeat
        self.render = render
        self.reports = {
            name: NodeReport(
                name, "cpu", "sim", slots, 0, cores=slots, memory_bytes=2**34, region="guizhou",
                energy_method="model",
            ).to_dict()
            for name in self.names
        }  # fmt: skip
        self.holding: dict[str, dict[str, tuple[float, dict[str, Any]]]] = defaultdict(dict)
        self.silenced: set[str] = set()
        self.last_beat: dict[str, float] = {}
        self.finished = 0
        self.stop = threading.Event()

    def run(self) -> None:
        steps = max(1, round(self.heartbeat / TICK))
        step = 0
        while not self.stop.is_set():
            started = time.monotonic()
            live = [n for i, n in enumerate(self.names) if i % steps == step % steps]
            self._beat([n for n in live if n not in self.silenced])
            if step % 5 == 0:
                self._take()
            self._finish()
            step += 1
            self.stop.wait(max(0.0, TICK - (time.monotonic() - started)))

    def _beat(self, names: list[str]) -> None:
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                info = {**self.reports[name], "running": len(self.holding[name])}
                beat = {"v": 1, "kind": "heartbeat", "node": name, "info": info,
                        "tasks": sorted(self.holding[name]), "at": now}  # fmt: skip
                pipe.lpush(EVENTS_KEY, json.dumps(beat))
                self.last_beat[name] = now
            pipe.execute()

    def _take(self) -> None:
        names = [n for n in self.names if n not in self.silenced]
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.rpop(node_queue(name), 8)
            taken = pipe.execute()
        due = time.monotonic() + self.render
        for name, messages in zip(names, taken, strict=True):
            for raw in messages or ():
                chunk = json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
                self.holding[name][task_id_for(chunk["chunk_id"], chunk["attempt"])] = (due, chunk)

    def _finish(self) -> None:
        now, at = time.monotonic(), time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            for name, held in self.holding.items():
                if name in self.silenced:
                    continue
                for task_id, (due, chunk) in list(held.items()):
                    if due > now:
                        continue
                    del held[task_id]
                    results = [{"frame": f, "output": None, "render_seconds": self.render,
                                "cpu_seconds": self.render} for f in chunk["frames"]]  # fmt: skip
                    finished = {"v": 1, "kind": "finished", "chunk_id": chunk["chunk_id"],
                                "attempt": chunk["attempt"], "job_id": chunk["job_id"],
                                "node": name, "region": "guizhou", "at": at,
                                "started_at": at - self.render, "results": results,
                                "exit_code": 0}  # fmt: skip
                    pipe.lpush(EVENTS_KEY, json.dumps(finished))
                    self.finished += 1
            pipe.execute()


Histogram = tuple[dict[float, float], float, float]  # cumulative by bucket, count, sum


def histogram(port: int, name: str) -> Histogram:
    """One of the scheduler's histograms, as its metrics say now."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return buckets, count, total


def between(before: Histogram, after: Histogram) -> dict[str, float]:
    """How many, the share under 100 ms and the mean (ms), between two readings."""
    count = after[1] - before[1]
    if not count:
        return {"count": 0, "under_100ms": 0.0, "mean_ms": 0.0}
    return {
        "count": count,
        "under_100ms": round((after[0][0.1] - before[0][0.1]) / count, 4),
        "mean_ms": round((after[2] - before[2]) / count * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--frames-per-second", type=int, default=100)
    parser.add_argument("--render-seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--silenced", type=int, default=50)
    parser.add_argument("--node-timeout", type=float, default=None, help="default: the farm's")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="renderfarm-bench-") as folder:
        redis_server = EmbeddedRedis()
        redis_server.start()
        overrides = {"node_timeout": args.node_timeout} if args.node_timeout else {}
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=Path(folder),
            broker_url=redis_server.url,
            database_url=args.database_url,
            **overrides,
        )
        engine = make_engine(settings.effective_database_url)
        create_tables(engine)
        port = free_port()
        env = dict(
            os.environ,
            RENDERFARM_BROKER_URL=redis_server.url,
            RENDERFARM_DATABASE_URL=settings.effective_database_url,
            RENDERFARM_DATA_DIR=folder,
            RENDERFARM_NODE_TIMEOUT=str(settings.node_timeout),
        )
        with open(Path(folder) / "scheduler.log", "ab") as log:
            scheduler = subprocess.Popen(
                [sys.executable, "-m", "scheduler.launch.cli", "scheduler",
                 "--metrics-port", str(port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        nodes = SimulatedNodes(
            redis_server.url, args.nodes, settings.heartbeat_seconds, args.render_seconds
        )
        generator = threading.Thread(target=nodes.run, daemon=True)
        studios = StudioService(engine, settings)
        studio, _key = studios.create_studio("bench")
        assert studio.id is not None
        stop_submitting = threading.Event()

        def submit() -> None:
            while not stop_submitting.wait(1.0):
                request = {"name": "n", "frames": f"1-{args.frames_per_second}", "pool": "cpu",
                           "renderer": {"kind": "noop"}}  # fmt: skip
                studios.submit_job(studio.id or 0, JobRequest.model_validate(request))

        try:
            wait_until(lambda: _answers(port), 60, "the scheduler's metrics did not answer")
            generator.start()
            threading.Thread(target=submit, daemon=True).start()
            time.sleep(args.warmup)
            process = psutil.Process(scheduler.pid)
            cpu, finished = cpu_seconds(process), nodes.finished
            turns_before, ticks_before = histogram(port, TURNS), histogram(port, TICKS)
            time.sleep(args.window)
            cores = (cpu_seconds(process) - cpu) / args.window
            turns = between(turns_before, histogram(port, TURNS))
            ticks = between(ticks_before, histogram(port, TICKS))
            frames_per_s = (nodes.finished - finished) / args.window
            online = _online(engine)
            silenced = nodes.names[: args.silenced]
            nodes.silenced.update(silenced)
            detected = _wait_lost(engine, silenced, nodes.last_beat, settings.node_timeout + 30)
        finally:
            stop_submitting.set()
            nodes.stop.set()
            stop_process(scheduler)
            engine.dispose()
            redis_server.stop()
    result = {
        "nodes": args.nodes,
        "online_nodes": online,
        "heartbeats_per_s": round(args.nodes / settings.heartbeat_seconds),
        "frames_per_s": round(frames_per_s, 1),
        "scheduler_cores": round(cores, 3),
        "turns_per_s": round(turns["count"] / args.window, 1),
        "turns": turns,  # each loop turn: ingest a batch, reconcile, maybe dispatch
        "dispatch_ticks_per_s": round(ticks["count"] / args.window, 1),
        "dispatch_ticks": ticks,
        "node_timeout_s": settings.node_timeout,
        "lost_detected_after_s": {"max": round(max(detected), 1), "min": round(min(detected), 1)},
    }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:<24}{value}")


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _online(engine: Any) -> int:
    with Session(engine) as session:
        return len(
            session.execute(select(col(NodeRow.name)).where(NodeRow.state == "online")).all()
        )


def _wait_lost(
    engine: Any, names: list[str], last_beat: dict[str, float], within: float
) -> list[float]:
    """Seconds from each node's last heartbeat to the scheduler marking it lost."""
    found: dict[str, float] = {}
    deadline = time.monotonic() + within
    while len(found) < len(names) and time.monotonic() < deadline:
        with Session(engine) as session:
            lost = session.execute(
                select(col(NodeRow.name)).where(
                    col(NodeRow.name).in_(names), col(NodeRow.state) == "lost"
                )
            ).all()
        now = time.time()
        for (name,) in lost:
            found.setdefault(name, now - last_beat[name])
        time.sleep(0.25)
    if len(found) < len(names):
        raise RuntimeError(f"{len(names) - len(found)} silent node(s) never marked lost")
    return list(found.values())


if __name__ == "__main__":
    main()
