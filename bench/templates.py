"""OpenJD templates through the farm against the farm's own ``noop`` renderer, on the same
embedded farm, in one run; and what entering a step environment costs per session.

Noop: a job of N frames in chunks of C with the ``noop`` renderer (the farm's floor: it
renders nothing, in the worker's process). Template: a one-step template of N tasks
(an INT parameter, chunks of C) whose task runs ``true``, in one openjd-sessions
Session per chunk (a process per task, the session's own files and logs). With an
environment: the same step with a step environment whose onEnter and onExit run
``true``, entered once per session. Each is timed from the POST to every job reading
``done``; rounds alternate the three. Prints tasks/s, template/noop, and the extra
milliseconds per session that the environment costs: on the farm, and measured alone
(sessions of C ``true`` tasks run one after another in this process, with and without
the environment, alternated: the farm's own noise left out). And the submission of a
step of a million tasks against a job of a million frames (in this process, SQLite):
milliseconds per POST and the chunk rows written (a few: the rest are blocks).

    python bench/templates.py                         # 200 tasks, chunks of 10, 3 rounds
    python bench/templates.py --tasks 400 --chunk-size 20 --slots 2 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dispatch import free_port, wait_for_job
from scheduler.launch.demo import studio_key
from scheduler.launch.embedded import LocalFarm, wait_until
from scheduler.settings import Settings


def template(tasks: int, environment: bool) -> dict[str, Any]:
    step: dict[str, Any] = {
        "name": "True",
        "parameterSpace": {
            "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": f"1-{tasks}"}]
        },
        "script": {"actions": {"onRun": {"command": "true"}}},
    }
    if environment:
        actions = {"onEnter": {"command": "true"}, "onExit": {"command": "true"}}
        step["stepEnvironments"] = [{"name": "Tools", "script": {"actions": actions}}]
    return {"specificationVersion": "jobtemplate-2023-09", "name": "bench", "steps": [step]}


def session_seconds(document: dict[str, Any], tasks: int, root: Path) -> float:
    """Seconds to run one session of ``tasks`` tasks of the template's step, here."""
    import io

    from scheduler.wire.openjd import chunk_tasks, instantiate, plan_steps, read_template
    from workers.openjd_session import StepSession

    job = instantiate(read_template(document), {})
    [plan] = plan_steps(job, tasks)
    work = chunk_tasks(job, plan, range(1, tasks + 1))
    session = StepSession(job, 0, f"bench-{time.monotonic_ns()}", root, io.StringIO())
    started = time.perf_counter()
    session.run(work, lambda _done: None)
    return time.perf_counter() - started


def million(tmp: Path) -> dict[str, float]:
    """A template whose step has a million tasks against a job of a million frames,
    submitted to the API in this process (SQLite): seconds per POST and rows written."""
    from fastapi.testclient import TestClient
    from sqlalchemy import func
    from sqlmodel import Session, select

    from api.app import create_app
    from scheduler.db import ChunkRow, create_tables, make_engine
    from scheduler.usecases.jobs import StudioService

    settings = Settings(data_dir=tmp / "million")
    settings.data_dir.mkdir()
    engine = make_engine(settings.effective_database_url)
    create_tables(engine)
    key = StudioService(engine, settings).create_studio("bench", allow_templates=True)[1]
    document = template(1_000_000, False)
    bodies = {
        "template": ("/v1/templates", {"template": document, "chunk_size": 10}),
        "job": (
            "/v1/jobs",
            {"name": "j", "frames": "1-1000000", "chunk_size": 10, "renderer": {"kind": "noop"}},
        ),
    }
    figures: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings, engine)) as client:
        for kind, (path, body) in bodies.items():
            times = []
            for _ in range(3):
                started = time.perf_counter()
                answer = client.post(path, json=body, headers=headers)
                times.append(time.perf_counter() - started)
                answer.raise_for_status()
            made = answer.json()
            job_id = made["jobs"][0]["id"] if kind == "template" else made["id"]
            with Session(engine) as session:
                rows = session.exec(
                    select(func.count()).select_from(ChunkRow).where(ChunkRow.job_id == job_id)
                ).one()
            figures[f"million_{kind}_post_ms"] = 1000 * statistics.median(times)
            figures[f"million_{kind}_chunk_rows"] = rows
    return figures


def timed(farm: LocalFarm, client: httpx.Client, submit: tuple[str, dict[str, Any]]) -> float:
    """Seconds from the POST to its jobs being done."""
    path, body = submit
    started = time.perf_counter()
    answer = client.post(path, json=body)
    answer.raise_for_status()
    made = answer.json()
    for job in made.get("jobs", [made]):
        wait_for_job(farm, client, job["id"])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=10)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n, size = args.tasks, args.chunk_size
    kinds = {
        "noop": (
            "/v1/jobs",
            {"name": "noop", "frames": f"1-{n}", "chunk_size": size, "renderer": {"kind": "noop"}},
        ),
        "template": ("/v1/templates", {"template": template(n, False), "chunk_size": size}),
        "environment": ("/v1/templates", {"template": template(n, True), "chunk_size": size}),
    }
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="renderfarm-bench-openjd-") as tmp:
        settings = Settings(data_dir=Path(tmp), energy_meter="model")
        with LocalFarm(settings, workers=1, slots=args.slots, api_port=free_port()) as farm:
            client = httpx.Client(
                base_url=farm.api_url,
                headers={"Authorization": f"Bearer {studio_key(settings)}"},
                timeout=60,
            )
            wait_until(lambda: bool(client.get("/v1/nodes").json()), 120, "no node reported")
            timed(farm, client, kinds["template"])  # warm: openjd's imports in the pool
            for _ in range(args.rounds):
                for kind, submit in kinds.items():
                    seconds[kind].append(timed(farm, client, submit))
        alone: dict[bool, list[float]] = {False: [], True: []}
        root = Path(tmp) / "sessions"
        root.mkdir()
        session_seconds(template(size, True), size, root)  # warm
        for _ in range(10 * args.rounds):
            for environment in (False, True):
                alone[environment].append(session_seconds(template(size, environment), size, root))
        submissions = million(Path(tmp))
    rate = {kind: [n / s for s in values] for kind, values in seconds.items()}
    sessions = -(-n // size)
    extra_ms = [
        1000 * (with_env - plain) / sessions
        for with_env, plain in zip(seconds["environment"], seconds["template"], strict=True)
    ]
    figures = {
        "tasks": n,
        "chunk_size": size,
        "slots": args.slots,
        "rounds": args.rounds,
        "noop_tasks_per_s": statistics.median(rate["noop"]),
        "template_tasks_per_s": statistics.median(rate["template"]),
        "environment_tasks_per_s": statistics.median(rate["environment"]),
        "template_over_noop": statistics.median(
            t / o for t, o in zip(rate["template"], rate["noop"], strict=True)
        ),
        "environment_ms_per_session": statistics.median(extra_ms),
        "session_ms_alone": 1000 * statistics.median(alone[False]),
        "environment_ms_per_session_alone": 1000
        * (statistics.median(alone[True]) - statistics.median(alone[False])),
        "rounds_tasks_per_s": {
            kind: [round(r, 1) for r in values] for kind, values in rate.items()
        },
        **submissions,
        **submissions,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{n} tasks in chunks of {size}, {args.slots} slots, {args.rounds} rounds (median)")
    print(f"  noop renderer        {figures['noop_tasks_per_s']:8.1f} tasks/s")
    print(f"  template, `true`     {figures['template_tasks_per_s']:8.1f} tasks/s")
    print(f"  with a step env      {figures['environment_tasks_per_s']:8.1f} tasks/s")
    print(f"  template / noop      {figures['template_over_noop']:8.3f}")
    print(f"  environment          {figures['environment_ms_per_session']:8.1f} ms per session")
    print(f"  a session, alone     {figures['session_ms_alone']:8.1f} ms ({size} tasks)")
    print(
        f"  environment, alone   {figures['environment_ms_per_session_alone']:8.1f} ms per session"
    )
    for kind in ("template", "job"):
        post, rows = figures[f"million_{kind}_post_ms"], figures[f"million_{kind}_chunk_rows"]
        print(f"  a million-task {kind:8s} POST {post:7.0f} ms, {rows:.0f} chunk rows")


if __name__ == "__main__":
    main()
