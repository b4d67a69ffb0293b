"""An OpenJD template on a real farm: submitted over the API, its steps' jobs scheduled
by the real scheduler loop and rendered by real nodes (Celery workers) in
openjd-sessions Sessions, with their progress, failures and cancel seen by the studio."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.db import AttemptRow, FrameResultRow
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from tests.conftest import Processes, wait_for

pytestmark = pytest.mark.integration

# Render writes a file per frame, in sessions whose step environment counts its entries
# and exits; Encode, which waits for all of Render, joins them. Out is a PATH.
TWO_STEPS = """
specificationVersion: jobtemplate-2023-09
name: "{{Param.Shot}}"
parameterDefinitions:
- {name: Shot, type: STRING, default: sh010}
- {name: Out, type: PATH}
steps:
- name: Render
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1-6"}
  stepEnvironments:
  - name: Licence
    script:
      actions:
        onEnter: {command: sh, args: ["-c", "echo enter >> '{{Param.Out}}/sessions'"]}
        onExit: {command: sh, args: ["-c", "echo exit >> '{{Param.Out}}/sessions'"]}
  script:
    actions:
      onRun: {command: "{{Task.File.Render}}"}
    embeddedFiles:
    - name: Render
      type: TEXT
      runnable: true
      data: |
        #!/bin/sh
        echo "openjd_status: rendering {{Param.Shot}} frame {{Task.Param.Frame}}"
        echo "openjd_progress: 50"
        echo "frame {{Task.Param.Frame}}" > '{{Param.Out}}/frame-{{Task.Param.Frame}}.txt'
- name: Encode
  dependencies: [{dependsOn: Render}]
  script:
    actions:
      onRun:
        command: sh
        args: ["-c", "cat '{{Param.Out}}'/frame-*.txt > '{{Param.Out}}/{{Param.Shot}}.mov'"]
"""

# A task that says how far it is, then waits for the test; and one that fails.
SLOW_AND_FAILING = """
specificationVersion: jobtemplate-2023-09
name: slow
parameterDefinitions:
- {name: Gate, type: PATH}
steps:
- name: Slow
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1"}
  script:
    actions:
      onRun: {command: "{{Task.File.Run}}"}
    embeddedFiles:
    - name: Run
      type: TEXT
      runnable: true
      data: |
        #!/bin/sh
        echo "openjd_progress: 40"
        echo "openjd_status: simulating the ocean"
        while [ ! -e '{{Param.Gate}}' ]; do sleep 0.2; done
- name: Broken
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "7"}
  script:
    actions:
      onRun:
        command: sh
        args: ["-c", "echo 'openjd_fail: the plates of sh030 are missing'; exit 4"]
"""

SLEEPER = """
specificationVersion: jobtemplate-2023-09
name: sleeper
steps:
- name: Sleep
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1-4"}
  script:
    actions:
      onRun:
        command: sh
        args: ["-c", "echo openjd_sleeping_{{Task.Param.Frame}}; exec sleep 617"]
"""


@pytest.fixture
def studio_key(engine: Engine, settings: Settings) -> dict[str, str]:
    service = StudioService(engine, settings)
    _studio, key = service.create_studio("weta-east", allow_templates=True)
    return {"Authorization": f"Bearer {key}"}


def submit(client: TestClient, key: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/v1/templates", json=body, headers=key)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def ended(client: TestClient, key: dict[str, str], template_id: int) -> dict[str, Any] | None:
    template = client.get(f"/v1/templates/{template_id}", headers=key).json()
    final = all(job["state"] in ("done", "failed", "cancelled") for job in template["jobs"])
    return dict(template) if final else None


def sleepers() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "openjd_sleeping_" in cmdline or cmdline.startswith("sleep 617"):
            found.append(process)
    return found


def test_a_two_step_template_renders_on_real_nodes_once_per_session_in_order(
    client: TestClient,  # first: its app migrates the database before the loop starts
    studio_key: dict[str, str],
    scheduler_loop: None,
    processes: Processes,
    engine: Engine,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    processes.worker("node-1", slots=1)
    processes.worker("node-2", slots=1)
    body = {"template": TWO_STEPS, "parameters": {"Out": str(out)}, "chunk_size": 3}
    template = submit(client, studio_key, body)
    render, _encode = template["jobs"]
    done = wait_for(lambda: ended(client, studio_key, template["id"]), 120, "the template")
    assert done["state"] == "done", (done, processes.log("node-1"), processes.log("node-2"))
    assert sorted(p.name for p in out.glob("frame-*.txt")) == [
        f"frame-{n}.txt" for n in range(1, 7)
    ]
    assert (out / "sh010.mov").read_text().splitlines() == [f"frame {n}" for n in range(1, 7)]
    # Two chunks of three tasks: the step environment is entered and exited once per
    # session, not once per task (a chunk retried on a busy machine may add a session).
    sessions = (out / "sessions").read_text().split()
    assert sessions.count("enter") == sessions.count("exit") >= 2
    assert sessions.count("enter") < 6
    frames = client.get(f"/v1/jobs/{render['id']}/frames", headers=studio_key).json()
    assert [f["state"] for f in frames] == ["done"] * 6
    with Session(engine) as session:
        results = session.exec(
            select(FrameResultRow).where(FrameResultRow.job_id == render["id"])
        ).all()
    assert len(results) == 6 and all(r.it_joules and r.it_joules > 0 for r in results)
    rendered, encoded = done["jobs"]
    assert encoded["depends_on"] == [render["id"]]
    assert encoded["started_at"] >= rendered["finished_at"]  # Encode waited for Render
    log = client.get(f"/v1/jobs/{render['id']}/frames/1/log", headers=studio_key).text
    assert "rendering sh010 frame 1" in log


def test_a_tasks_progress_and_failure_reach_the_studio(
    client: TestClient,  # first: its app migrates the database before the loop starts
    studio_key: dict[str, str],
    engine: Engine,
    scheduler_loop: None,
    processes: Processes,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    processes.worker("node-1", slots=2)
    body = {"template": SLOW_AND_FAILING, "parameters": {"Gate": str(gate)}, "max_attempts": 1}
    template = submit(client, studio_key, body)
    slow, broken = template["jobs"]

    def running() -> dict[str, Any] | None:
        frames = client.get(f"/v1/jobs/{slow['id']}/frames", headers=studio_key).json()
        return frames[0] if frames[0].get("progress") else None

    frame = wait_for(running, 60, "the slow task's progress")
    assert frame["progress"] == pytest.approx(0.4)
    assert frame["status_line"] == "simulating the ocean"
    gate.touch()
    done = wait_for(lambda: ended(client, studio_key, template["id"]), 60, "the template")
    assert [job["state"] for job in done["jobs"]] == ["done", "failed"]
    assert done["state"] == "failed"
    [failed] = client.get(f"/v1/jobs/{broken['id']}/frames", headers=studio_key).json()
    assert failed["state"] == "failed"
    assert "the plates of sh030 are missing" in (failed["error"] or ""), failed
    with Session(engine) as session:  # what the failed task used is counted, as waste
        [attempt] = session.exec(select(AttemptRow).where(AttemptRow.job_id == broken["id"]))
    assert attempt.state == "failed" and attempt.energy_joules is not None


def test_a_cancelled_template_leaves_no_process_on_its_nodes(
    client: TestClient,  # first: its app migrates the database before the loop starts
    studio_key: dict[str, str],
    scheduler_loop: None,
    processes: Processes,
) -> None:
    processes.worker("node-1", slots=2)
    template = submit(client, studio_key, {"template": SLEEPER})
    wait_for(lambda: len(sleepers()) >= 2, 60, "two tasks to run")
    cancelled = client.post(f"/v1/templates/{template['id']}/cancel", headers=studio_key)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    wait_for(lambda: not sleepers(), 60, "the tasks' processes to end")
    time.sleep(1.0)  # nothing starts again
    assert sleepers() == []


# A PATH parameter names a plate as it is on the studio's machines; the task reads it
# where the node laid the job's files out.
COMP = """
specificationVersion: jobtemplate-2023-09
name: comp
parameterDefinitions:
- {name: Plate, type: PATH}
- {name: Out, type: PATH}
steps:
- name: Comp
  script:
    actions:
      onRun:
        command: sh
        args: ["-c", "cat '{{Param.Plate}}' > '{{RawParam.Out}}/comp.txt'; echo '{{Param.Plate}}'"]
"""


def test_a_templates_files_are_laid_out_on_the_node_and_its_paths_mapped_to_them(
    client: TestClient,
    studio_key: dict[str, str],
    scheduler_loop: None,
    processes: Processes,
    tmp_path: Path,
) -> None:
    plate = b"plate A of sh010\n"
    files = {"path": "plates/a.txt", "size": len(plate), "hash": hashlib.sha256(plate).hexdigest()}
    body = {"files": [{**files, "mtime": 1.0e9}]}
    assert client.post("/v1/assets/missing", json=body, headers=studio_key).status_code == 200
    assert (
        client.put(f"/v1/blobs/{files['hash']}", content=plate, headers=studio_key).status_code
        == 201
    )
    manifest = client.post("/v1/manifests", json=body, headers=studio_key).json()["id"]
    out = tmp_path / "out"
    out.mkdir()
    processes.worker("node-1", slots=1)
    template = submit(
        client,
        studio_key,
        {
            "template": COMP,
            "parameters": {"Plate": "/mnt/show/sh010/plates/a.txt", "Out": str(out)},
            "manifest": manifest,
            "files_root": "/mnt/show/sh010",
        },
    )
    done = wait_for(lambda: ended(client, studio_key, template["id"]), 60, "the template")
    assert done["state"] == "done", processes.log("node-1")
    assert (out / "comp.txt").read_bytes() == plate
    job = done["jobs"][0]["id"]
    log = client.get(f"/v1/jobs/{job}/frames/1/log", headers=studio_key).text
    mapped = [line for line in log.splitlines() if line.endswith("/files/plates/a.txt")]
    assert mapped, log  # the task saw the node's path, not the studio's
