"""The API under load, against a bare FastAPI app answering a constant, in one run.

Three measures, each against a real ``renderfarm api`` process (SQLite by default,
``--database-url`` for PostgreSQL):

- *contention*: ``--submitters`` clients each submit one job at the same moment while
  ``--scrapers`` loops scrape /metrics and ``--readers`` loops read a job; counts
  the requests, the errors by status (``connection`` for a dropped connection), the
  jobs acknowledged and stored, and names stored twice;
- *big job*: one job of ``--big-frames`` frames (a million): how long its submission
  takes to answer, the API process's memory before and after, and a page of its frames
  near the end (``after=``) and its GET;
- *reads*: GET /v1/jobs/{id} over ``--jobs`` stored jobs, as fast as ``--clients``
  connections go (throughput), then at a fixed ``--rate`` (p50/p99 from each request's
  scheduled time, so a stall counts against every request it delays); the same on a
  bare FastAPI app (a sync route, like the API's, served by uvicorn with the same
  access log) that answers a constant. Rounds alternate; medians are printed. The reads
  are made with aiohttp: httpx spent ~3 ms of CPU per request on this machine's two
  cores, as much as the server, and its load was most of what the measure saw.

    python bench/api.py                      # SQLite, 200 submitters, 10,000 jobs, a table
    python bench/api.py --json               # {"contention": ..., "reads": ..., "big_job": ...}
    python bench/api.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench
    python bench/api.py --workers 2          # the API and the constant each served by 2 processes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dispatch import free_port
from scheduler.launch.embedded import EmbeddedRedis, stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent


def constant_app() -> Any:
    """The baseline: FastAPI answering a constant on the API's path, nothing else."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    def job(job_id: int) -> dict[str, Any]:
        return {"id": job_id, "name": "constant", "state": "queued"}

    return app


def serve_constant(port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "bench.api:constant_app",
        factory=True,
        workers=workers,
        host="127.0.0.1",
        port=port,
        log_level="info",
    )


def seed(database_url: str, data_dir: Path, jobs: int) -> tuple[str, list[int]]:
    """A fresh schema, a studio and ``jobs`` one-frame jobs; the studio's key and job ids."""
    from sqlalchemy import insert, text
    from sqlmodel import Session, SQLModel, col, select

    from scheduler.db import ChunkRow, JobRow, create_tables, make_engine
    from scheduler.settings import Settings
    from scheduler.usecases.jobs import StudioService
    from scheduler.usecases.submissions import JobRequest

    engine = make_engine(database_url)
    with engine.begin() as connection:
        SQLModel.metadata.drop_all(connection)
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    create_tables(engine)
    settings = Settings(_env_file=None, data_dir=data_dir, database_url=database_url)  # type: ignore[call-arg]
    service = StudioService(engine, settings)
    studio, key = service.create_studio("bench-east")
    assert studio.id is not None
    request = JobRequest.model_validate(
        {"name": "seed", "frames": "1", "renderer": {"kind": "noop"}}
    )
    first = service.submit_job(studio.id, request)
    with Session(engine) as session:
        columns = first.model_dump(exclude={"id"})
        chunk = session.exec(select(ChunkRow).where(ChunkRow.job_id == first.id)).one()
        chunk_columns = chunk.model_dump(exclude={"id", "job_id"})
        for start in range(1, jobs, 1000):
            count = min(1000, jobs - start)
            ids = session.execute(
                insert(JobRow).returning(col(JobRow.id)),
                [{**columns, "name": f"seed {start + n}"} for n in range(count)],
            ).scalars()
            session.execute(
                insert(ChunkRow), [{**chunk_columns, "job_id": job_id} for job_id in ids]
            )
        session.commit()
        job_ids = list(session.exec(select(JobRow.id)).all())
    engine.dispose()
    return key, [i for i in job_ids if i is not None]


def stored_names(database_url: str, tag: str) -> Counter[str]:
    """How many jobs the database holds under each name of this round."""
    from sqlalchemy import func
    from sqlmodel import Session, col, select

    from scheduler.db import JobRow, make_engine

    engine = make_engine(database_url)
    with Session(engine) as session:
        rows = session.exec(
            select(JobRow.name, func.count())
            .where(col(JobRow.name).startswith(f"{tag} "))
            .group_by(col(JobRow.name))
        ).all()
    engine.dispose()
    return Counter({name: n for name, n in rows})


def start_api(
    env: dict[str, str], port: int, log: Path, workers: int = 1
) -> subprocess.Popen[bytes]:
    renderfarm = Path(sys.executable).with_name("renderfarm")
    command = (
        [str(renderfarm)] if renderfarm.exists() else [sys.executable, "-m", "scheduler.launch.cli"]
    )
    where = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    return _start([*command, "api", *where], env, log)


def start_constant(port: int, log: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--serve-constant", str(port), "--workers", str(workers)]
    return _start(command, env, log)


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        child = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=ROOT,
        )  # fmt: skip
    return child


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


async def contention(
    base: str,
    key: str,
    job_id: int,
    submitters: int,
    scrapers: int,
    readers: int,
    tag: str,
    database_url: str,
) -> dict[str, Any]:
    """Every submitter at once, with scrapers and readers looping until they are done."""
    statuses: Counter[str] = Counter()
    acknowledged: list[int] = []
    go = asyncio.Event()
    done = asyncio.Event()
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=submitters + scrapers + readers + 8)
    async with httpx.AsyncClient(
        base_url=base, timeout=60, limits=limits, headers=headers
    ) as client:

        async def call(method: str, path: str, **kwargs: Any) -> httpx.Response | None:
            try:
                response = await client.request(method, path, **kwargs)
            except httpx.HTTPError as error:
                statuses[f"connection ({type(error).__name__})"] += 1
                return None
            statuses[str(response.status_code)] += 1
            return response

        async def submit(n: int) -> None:
            await go.wait()
            body = {"name": f"{tag} {n}", "frames": "1-10", "renderer": {"kind": "noop"}}
            response = await call("POST", "/v1/jobs", json=body)
            if response is not None and response.status_code == 201:
                acknowledged.append(response.json()["id"])

        async def loop(path: str) -> None:
            await go.wait()
            while not done.is_set():
                await call("GET", path)

        background = [asyncio.create_task(loop("/metrics")) for _ in range(scrapers)]
        background += [asyncio.create_task(loop(f"/v1/jobs/{job_id}")) for _ in range(readers)]
        submits = [asyncio.create_task(submit(n)) for n in range(submitters)]
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        go.set()
        await asyncio.gather(*submits)
        elapsed = time.perf_counter() - started
        done.set()
        await asyncio.gather(*background)
    errors = {status: n for status, n in statuses.items() if not status.startswith("2")}
    stored = stored_names(database_url, tag)
    return {
        "requests": sum(statuses.values()),
        "errors": errors,
        "error_count": sum(errors.values()),
        "jobs_acknowledged": len(acknowledged),
        "jobs_stored": sum(stored.values()),
        "duplicates": sum(n - 1 for n in stored.values() if n > 1),
        "submit_seconds": round(elapsed, 2),
    }


async def throughput(
    base: str, headers: dict[str, str], ids: list[int], clients: int, seconds: float
) -> float:
    """Requests per second with ``clients`` connections each asking as soon as answered."""
    count = 0
    failed = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base, headers=headers, connector=connector) as client:
        deadline = time.perf_counter() + seconds

        async def ask() -> None:
            nonlocal count, failed
            while time.perf_counter() < deadline:
                async with client.get(f"/v1/jobs/{random.choice(ids)}") as response:
                    await response.read()
                count += 1
                failed += response.status != 200

        started = time.perf_counter()
        await asyncio.gather(*(ask() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{failed} of {count} reads failed at {base}")
    return count / elapsed


async def latencies(
    base: str, headers: dict[str, str], ids: list[int], rate: float, seconds: float
) -> list[float]:
    """Milliseconds from each request's scheduled time to its answer, at ``rate`` per s."""
    found: list[float] = []
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(base, headers=headers, connector=connector) as client:

        async def ask(at: float) -> None:
            async with client.get(f"/v1/jobs/{random.choice(ids)}") as response:
                await response.read()
                response.raise_for_status()
            found.append((time.perf_counter() - at) * 1000)

        tasks = []
        start = time.perf_counter() + 0.05
        for n in range(int(rate * seconds)):
            at = start + n / rate
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            tasks.append(asyncio.create_task(ask(at)))
        await asyncio.gather(*tasks)
    return found


def big_job(base: str, headers: dict[str, str], api_pid: int, frames: int) -> dict[str, Any]:
    """Submit one job of ``frames`` frames: the answer's time, the API process's memory
    before and after, and the time of a frame page near its end and of the job's GET."""
    api = psutil.Process(api_pid)
    before = _tree_rss(api)
    body = {"name": "a big job", "frames": f"1-{frames}", "renderer": {"kind": "noop"}}
    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        started = time.perf_counter()
        answer = client.post("/v1/jobs", json=body)
        submit = time.perf_counter() - started
        answer.raise_for_status()
        job = answer.json()["id"]
        started = time.perf_counter()
        page = client.get(f"/v1/jobs/{job}/frames", params={"after": frames - 100, "limit": 50})
        page_seconds = time.perf_counter() - started
        page.raise_for_status()
        started = time.perf_counter()
        client.get(f"/v1/jobs/{job}").raise_for_status()
        get_seconds = time.perf_counter() - started
    return {
        "frames": frames,
        "submit_seconds": round(submit, 3),
        "api_rss_mib_before": round(before / 2**20, 1),
        "api_rss_mib_after": round(_tree_rss(api) / 2**20, 1),
        "frame_page_near_the_end_seconds": round(page_seconds, 3),
        "job_get_seconds": round(get_seconds, 3),
    }


def _tree_cpu(process: psutil.Process) -> float:
    """CPU seconds (user and system) of a server process and its workers so far."""
    return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])


def _tree_rss(process: psutil.Process) -> int:
    """Resident memory of the API process and its workers, if it has any."""
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    parser.add_argument("--broker-url", default=None, help="default: an embedded Redis")
    parser.add_argument("--submitters", type=int, default=200)
    parser.add_argument("--scrapers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs stored before the reads")
    parser.add_argument("--clients", type=int, default=16, help="connections for throughput")
    parser.add_argument("--rate", type=float, default=200.0, help="reads per second for latency")
    parser.add_argument("--seconds", type=float, default=5.0, help="of each read measure")
    parser.add_argument("--rounds", type=int, default=3, help="api and constant, alternated")
    parser.add_argument("--big-frames", type=int, default=1_000_000, help="frames of one job")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes of the API and of the constant alike"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-constant", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_constant is not None:
        serve_constant(args.serve_constant, args.workers)
        return

    with tempfile.TemporaryDirectory(prefix="renderfarm-bench-api-") as name:
        folder = Path(name)
        database_url = args.database_url or f"sqlite:///{folder / 'farm.db'}"
        embedded = None
        broker_url = args.broker_url
        if broker_url is None:
            embedded = EmbeddedRedis()
            embedded.start()
            broker_url = embedded.url
        children: list[subprocess.Popen[bytes]] = []
        try:
            key, ids = seed(database_url, folder, args.jobs)
            env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERFARM_")}
            env.update(
                RENDERFARM_DATABASE_URL=database_url,
                RENDERFARM_BROKER_URL=broker_url,
                RENDERFARM_DATA_DIR=str(folder),
            )
            api_port, constant_port = free_port(), free_port()
            children.append(start_api(env, api_port, folder / "api.log", args.workers))
            children.append(start_constant(constant_port, folder / "constant.log", args.workers))
            api, constant = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{constant_port}"
            wait_until(lambda: _answers(f"{api}/healthz"), 60, "the API did not start")
            wait_until(lambda: _answers(f"{constant}/v1/jobs/1"), 60, "the constant did not start")
            headers = {"Authorization": f"Bearer {key}"}

            contended = [
                asyncio.run(
                    contention(
                        api,
                        key,
                        ids[0],
                        args.submitters,
                        args.scrapers,
                        args.readers,
                        f"contention {round_}",
                        database_url,
                    )
                )
                for round_ in range(args.rounds)
            ]
            rates: dict[str, list[float]] = {"api": [], "constant": []}
            cpu: dict[str, list[float]] = {"api": [], "constant": []}  # of the server, per read
            rounds_waited: dict[str, list[list[float]]] = {"api": [], "constant": []}
            waits: dict[str, list[float]] = {"api": [], "constant": []}
            servers = {
                "api": psutil.Process(children[0].pid),
                "constant": psutil.Process(children[1].pid),
            }
            for round_ in range(args.rounds):
                for label, base in (("constant", constant), ("api", api)):
                    rate = asyncio.run(throughput(base, headers, ids, args.clients, args.seconds))
                    before = _tree_cpu(servers[label])
                    waited = asyncio.run(latencies(base, headers, ids, args.rate, args.seconds))
                    cpu[label].append((_tree_cpu(servers[label]) - before) / len(waited) * 1000)
                    rates[label].append(rate)
                    waits[label].extend(waited)
                    rounds_waited[label].append(waited)
                    print(
                        f"round {round_ + 1}: {label} {rate:.0f} reads/s, "
                        f"p99 {percentile(waited, 0.99):.1f} ms at {args.rate:.0f}/s, "
                        f"{cpu[label][-1]:.2f} ms of CPU a read",
                        file=sys.stderr,
                    )
            big = big_job(api, headers, children[0].pid, args.big_frames)
        finally:
            for child in children:
                stop_process(child)
            if embedded is not None:
                embedded.stop()

    api_rate, constant_rate = statistics.median(rates["api"]), statistics.median(rates["constant"])
    result: dict[str, Any] = {
        "database": database_url.split(":")[0],
        "workers": args.workers,
        "contention": {
            "submitters": args.submitters,
            "scrapers": args.scrapers,
            "readers": args.readers,
            "rounds": contended,
        },
        "reads": {
            "jobs_stored": len(ids),
            "api_reads_per_s": round(api_rate, 1),
            "constant_reads_per_s": round(constant_rate, 1),
            "ratio": round(api_rate / constant_rate, 3),
            "rate": args.rate,
            "api_p50_ms": round(percentile(waits["api"], 0.5), 2),
            "api_p99_ms": round(percentile(waits["api"], 0.99), 2),
            "constant_p50_ms": round(percentile(waits["constant"], 0.5), 2),
            "constant_p99_ms": round(percentile(waits["constant"], 0.99), 2),
            "api_cpu_ms_per_read": round(statistics.median(cpu["api"]), 2),
            "constant_cpu_ms_per_read": round(statistics.median(cpu["constant"]), 2),
            "api_p99_ms_by_round": [round(percentile(w, 0.99), 1) for w in rounds_waited["api"]],
        },
        "big_job": big,
    }
    if args.json:
        print(json.dumps(result))
        return
    reads: dict[str, Any] = result["reads"]
    for n, measured in enumerate(contended, 1):
        print(
            f"contention round {n}: {measured['requests']} requests, "
            f"errors {measured['errors'] or 0}, "
            f"{measured['jobs_acknowledged']} acknowledged, {measured['jobs_stored']} stored, "
            f"{measured['duplicates']} duplicates, submits took {measured['submit_seconds']} s"
        )
    print(f"reads of 1 of {len(ids)} jobs, medians of {args.rounds} alternating rounds")
    print(f"{'path':<28}{'reads/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(
        f"{'renderfarm api':<28}{api_rate:>10.0f}{reads['api_p50_ms']:>10}{reads['api_p99_ms']:>10}"
    )
    print(
        f"{'bare FastAPI constant':<28}{constant_rate:>10.0f}"
        f"{reads['constant_p50_ms']:>10}{reads['constant_p99_ms']:>10}"
    )
    print(f"{'ratio api / constant':<28}{api_rate / constant_rate:>10.3f}")
    print(
        f"a job of {big['frames']} frames: answered in {big['submit_seconds']} s, API memory "
        f"{big['api_rss_mib_before']} -> {big['api_rss_mib_after']} MiB; a page of frames near "
        f"its end in {big['frame_page_near_the_end_seconds']} s, its GET in "
        f"{big['job_get_seconds']} s"
    )


if __name__ == "__main__":
    main()
