"""A chunk of an OpenJD step's tasks run in one real openjd-sessions Session: environments
entered and exited once per session, task parameters, progress and failure messages
(a running task's progress and status line on the farm's board, in a real Redis), and
a cancel that leaves no process."""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import yaml

from api.schemas import FramePublic
from scheduler.core.chunks import plan_chunks
from scheduler.core.frames import parse_frame_spec
from scheduler.usecases.jobs import FrameStatus
from scheduler.wire.messages import ChunkMessage, FailedEvent, FinishedEvent, decode_event
from scheduler.wire.openjd import StepTasks, chunk_tasks, instantiate, plan_steps, read_template
from scheduler.wire.progress import PROGRESS_KEY, FrameProgress, ProgressBoard
from tests.conftest import wait_for
from workers.energy import EnergyLedger, LedgerServer
from workers.meters import ModelMeter
from workers.openjd_session import SessionCancelled, StepSession, TaskDone, TaskFailed
from workers.runner import run_chunk

TEMPLATE = """
specificationVersion: jobtemplate-2023-09
name: Session test
parameterDefinitions:
- {name: Out, type: STRING}
jobEnvironments:
- name: Farm
  script:
    actions:
      onEnter: {command: sh, args: ["-c", "echo enter-job >> {{Param.Out}}/events"]}
      onExit: {command: sh, args: ["-c", "echo exit-job >> {{Param.Out}}/events"]}
steps:
- name: Render
  parameterSpace:  # tasks by position: one per frame and camera
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1-6"}
    - {name: Cam, type: STRING, range: [left]}
    combination: "Frame * Cam"
  stepEnvironments:
  - name: Tools
    script:
      actions:
        onEnter: {command: sh, args: ["-c", "echo enter-step >> {{Param.Out}}/events"]}
        onExit: {command: sh, args: ["-c", "echo exit-step >> {{Param.Out}}/events"]}
  script:
    actions:
      onRun: {command: "{{Task.File.Run}}"}
    embeddedFiles:
    - name: Run
      type: TEXT
      runnable: true
      data: |
        #!/bin/sh
        echo "openjd_status: frame {{Task.Param.Frame}} of {{Task.Param.Cam}}"
        echo "openjd_progress: 50"
        case "{{Task.Param.Frame}}" in
          4) echo "openjd_fail: frame 4 has no camera"; exit 3 ;;
          5) exec sleep 300 ;;
        esac
        echo "{{Task.Param.Frame}} {{Task.Param.Cam}}" >> {{Param.Out}}/tasks
"""


def step_tasks(template: dict[str, Any], out: Path, frames: str) -> tuple[Any, list[Any]]:
    """The step's tasks for these of its frames, as the scheduler plans them."""
    job = instantiate(read_template(template), {"Out": str(out)})
    [plan] = plan_steps(job, 1)
    wanted = set(parse_frame_spec(frames))
    chunks = plan_chunks(sorted(wanted & set(parse_frame_spec(plan.frames))), plan.chunk_size)
    return job, [task for chunk in chunks for task in chunk_tasks(job, plan, chunk)]


@pytest.fixture
def template() -> dict[str, Any]:
    return yaml.safe_load(TEMPLATE)  # type: ignore[no-any-return]


def run_in_thread(
    session: StepSession, tasks: list[Any]
) -> tuple[threading.Thread, list[BaseException]]:
    """The session running in a thread of its own (started), and what it raises."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            session.run(tasks, lambda _done: None)
        except BaseException as error:
            raised.append(error)

    runner = threading.Thread(target=run)
    runner.start()
    return runner, raised


def session_of(job: Any, root: Path, log: io.StringIO, **extra: Any) -> StepSession:
    return StepSession(job, 0, f"test-{time.monotonic_ns()}", root, log, **extra)


def test_environments_are_entered_once_per_session_and_tasks_get_their_parameters(
    template: dict[str, Any], tmp_path: Path
) -> None:
    job, tasks = step_tasks(template, tmp_path, "1-3")
    statuses: list[Any] = []
    done: list[TaskDone] = []
    log = io.StringIO()
    session = session_of(
        job, tmp_path / "sessions", log, on_status=lambda _frames, status: statuses.append(status)
    )
    (tmp_path / "sessions").mkdir()
    session.run(tasks, done.append)
    assert [d.frames for d in done] == [[1], [2], [3]]
    assert (tmp_path / "tasks").read_text().split("\n")[:3] == ["1 left", "2 left", "3 left"]
    events = (tmp_path / "events").read_text().split()
    assert events == ["enter-job", "enter-step", "exit-step", "exit-job"]
    assert "frame 2 of left" in {s.status_message for s in statuses}
    assert 50.0 in {s.progress for s in statuses}
    assert "openjd_status: frame 3 of left" in log.getvalue()


def test_a_failing_task_says_why_and_the_environments_are_still_exited(
    template: dict[str, Any], tmp_path: Path
) -> None:
    job, tasks = step_tasks(template, tmp_path, "3-6")
    (tmp_path / "sessions").mkdir()
    done: list[TaskDone] = []
    with pytest.raises(TaskFailed) as failed:
        session_of(job, tmp_path / "sessions", io.StringIO()).run(tasks, done.append)
    assert (failed.value.frames, str(failed.value)) == ([4], "frame 4 has no camera")
    assert [d.frames for d in done] == [[3]]
    assert (tmp_path / "events").read_text().split()[-2:] == ["exit-step", "exit-job"]


def test_a_cancelled_session_leaves_no_process(template: dict[str, Any], tmp_path: Path) -> None:
    job, tasks = step_tasks(template, tmp_path, "5-6")
    (tmp_path / "sessions").mkdir()
    session = session_of(job, tmp_path / "sessions", io.StringIO())
    runner, raised = run_in_thread(session, tasks)
    deadline = time.monotonic() + 30
    while not sleepers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(), "the task did not start"
    session.cancel()
    runner.join(60)
    assert not runner.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], SessionCancelled)
    assert sleepers() == []
    assert not (tmp_path / "tasks").exists()  # frame 6 never ran
    assert (tmp_path / "events").read_text().split() == ["enter-job", "enter-step"]


def sleepers() -> list[psutil.Process]:
    """This test's task processes still alive: ``sleep 300`` started by a session."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.info["cmdline"] == ["sleep", "300"]:
            found.append(process)
    return found


# The node's runner: a chunk message of an OpenJD step, as the scheduler will send it.


def openjd_message(
    template: dict[str, Any], out: Path, frames: str, timeout: float = 60.0
) -> ChunkMessage:
    """One chunk of these frames, its tasks given by the scheduler's StepTasks."""
    settings = {"template": template, "parameters": {"Out": str(out)}, "step": 0}
    numbers = parse_frame_spec(frames)
    return ChunkMessage(
        chunk_id=9, attempt=1, job_id=4, pool="cpu", frames=numbers, renderer="openjd",
        settings=settings, tasks=StepTasks().of(4, settings, 1, numbers),
        output_pattern="jobs/4/frames/f_{frame}", log_path="jobs/4/logs/chunk-9.log",
        timeout=timeout,
    )  # fmt: skip


def test_a_node_runs_a_chunk_of_tasks_frame_by_frame_with_their_energy(
    template: dict[str, Any], tmp_path: Path
) -> None:
    ledger = EnergyLedger(ModelMeter(20.0, 80.0), idle_watts=20.0, slots=1)
    server = LedgerServer(ledger, every=0.2)
    server.start()
    events: list[dict[str, Any]] = []
    message = openjd_message(template, tmp_path, "1-3")
    try:
        assert run_chunk(message, tmp_path, "node-1", events.append, server.client(), "gz")
    finally:
        server.stop()
    assert [e["result"]["frame"] for e in events if e["kind"] == "frame"] == [1, 2, 3]
    finished = decode_event(events[-1])
    assert isinstance(finished, FinishedEvent)
    assert [r.frame for r in finished.results] == [1, 2, 3]
    assert all(
        r.energy_method == "model" and (r.energy_joules or 0) > 0 for r in finished.results
    ), finished.results
    assert all(r.render_seconds > 0 for r in finished.results)
    carried = sum(r.energy_joules or 0 for r in finished.results)
    assert carried + ledger.unattributed_joules == pytest.approx(ledger.total_joules, rel=1e-9)
    log = (tmp_path / message.log_path).read_text()
    assert "in an OpenJD session" in log and "openjd_status: frame 2 of left" in log
    assert (tmp_path / "events").read_text().split() == [
        "enter-job", "enter-step", "exit-step", "exit-job"
    ]  # fmt: skip


def test_a_failing_task_fails_the_attempt_with_its_message(
    template: dict[str, Any], tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    assert not run_chunk(openjd_message(template, tmp_path, "3-4"), tmp_path, "n", events.append)
    failed = decode_event(events[-1])
    assert isinstance(failed, FailedEvent)
    assert failed.error == "task 4: frame 4 has no camera"
    assert [e["result"]["frame"] for e in events if e["kind"] == "frame"] == [3]


def test_a_task_past_the_time_limit_is_cancelled_and_leaves_no_process(
    template: dict[str, Any], tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    message = openjd_message(template, tmp_path, "5", timeout=1.0)
    assert not run_chunk(message, tmp_path, "n", events.append)
    failed = decode_event(events[-1])
    assert isinstance(failed, FailedEvent) and "time limit" in failed.error
    assert sleepers() == []


def test_a_chunk_without_its_tasks_is_refused_saying_why(
    template: dict[str, Any], tmp_path: Path
) -> None:
    message = dataclasses.replace(openjd_message(template, tmp_path, "1-2"), tasks=None)
    events: list[dict[str, Any]] = []
    assert not run_chunk(message, tmp_path, "n", events.append)
    assert "do not cover its frames" in events[-1]["error"]


WORKER = """
import json, sys
from pathlib import Path
from scheduler.wire.messages import ChunkMessage
from workers.runner import install_termination_handler, run_chunk
install_termination_handler()
message = ChunkMessage.from_dict(json.loads(sys.argv[1]))
run_chunk(message, Path(sys.argv[2]), "node-1", lambda event: None)
"""


def test_a_worker_terminated_mid_task_leaves_no_process(
    template: dict[str, Any], tmp_path: Path
) -> None:
    """Celery's revoke with terminate sends the worker SIGTERM: the session's actions,
    in process groups of their own, die with it."""
    message = openjd_message(template, tmp_path, "5-6")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(message.to_dict()), str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        wait_for(lambda: bool(sleepers()), 30, "the task to start")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 128 + signal.SIGTERM
    finally:
        if worker.poll() is None:
            worker.kill()
    wait_for(lambda: sleepers() == [], 5, "the task's process to be gone")
    assert not (tmp_path / "tasks").exists()


def test_a_chunk_int_task_renders_its_whole_run_and_shares_its_figures(tmp_path: Path) -> None:
    template = yaml.safe_load(
        """
specificationVersion: jobtemplate-2023-09
extensions: [TASK_CHUNKING]
name: Chunked
parameterDefinitions:
- {name: Out, type: STRING}
steps:
- name: Render
  parameterSpace:
    taskParameterDefinitions:
    - name: Frames
      type: CHUNK[INT]
      range: "1-8"
      chunks: {defaultTaskCount: 4, rangeConstraint: CONTIGUOUS}
  script:
    actions:
      onRun: {command: sh, args: ["-c", "echo {{Task.Param.Frames}} >> {{Param.Out}}/runs"]}
"""
    )
    message = openjd_message(template, tmp_path, "5-8")
    assert message.tasks == [
        {"frames": [5, 6, 7, 8], "parameters": {"Frames": ["CHUNK[INT]", "5-8"]}}
    ]
    ledger = EnergyLedger(ModelMeter(20.0, 80.0), idle_watts=20.0, slots=1)
    server = LedgerServer(ledger, every=0.2)
    server.start()
    events: list[dict[str, Any]] = []
    try:
        assert run_chunk(message, tmp_path, "n", events.append, server.client())
    finally:
        server.stop()
    assert (tmp_path / "runs").read_text() == "5-8\n"  # one action for the run
    finished = decode_event(events[-1])
    assert isinstance(finished, FinishedEvent)
    assert [r.frame for r in finished.results] == [5, 6, 7, 8]
    shares = {r.energy_joules for r in finished.results[:3]}
    assert len(shares) == 1 and (shares.pop() or 0) > 0


PROGRESS_TEMPLATE = """
specificationVersion: jobtemplate-2023-09
name: Progress
parameterDefinitions:
- {name: Out, type: STRING}
steps:
- name: Render
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1-2"}
  script:
    actions:
      onRun:
        command: sh
        args:
        - "-c"
        - |
          echo "openjd_progress: 50"
          echo "openjd_status: halfway"
          until [ -e {{Param.Out}}/go ]; do sleep 0.05; done
"""


def test_a_running_tasks_progress_and_status_line_reach_the_board(
    tmp_path: Path, redis_url: str, broker: redis.Redis
) -> None:
    """What the studio sees of a running task in the job's frame listing: the board's
    count (``openjd_progress: 50`` is half the frame) and its ``openjd_status`` line."""
    message = openjd_message(yaml.safe_load(PROGRESS_TEMPLATE), tmp_path, "1-2")
    board = ProgressBoard(redis_url)
    events: list[dict[str, Any]] = []
    node = threading.Thread(
        target=run_chunk, args=(message, tmp_path, "node-1", events.append), daemon=True,
        kwargs={"progress": board},
    )  # fmt: skip
    node.start()
    try:

        def said() -> FrameProgress | None:
            count = board.read(message.job_id).get(1)
            return count if count is not None and count.status_line is not None else None

        count = wait_for(said, 30, "frame 1's count with its status line")
        assert (count.fraction, count.status_line) == (0.5, "halfway")
        assert (count.node, count.attempt) == ("node-1", message.attempt)
        assert 2 not in board.read(message.job_id)  # its task has not started
        running = FrameStatus(1, "running", message.chunk_id, "node-1", message.attempt,
                              None, None, None, None)  # fmt: skip
        shown = FramePublic.of(message.job_id, running, count)
        assert (shown.progress, shown.status_line) == (0.5, "halfway")
    finally:
        (tmp_path / "go").touch()
        node.join(60)
        board.close()
    assert not node.is_alive()
    assert isinstance(decode_event(events[-1]), FinishedEvent)
    assert broker.hgetall(PROGRESS_KEY.format(job_id=message.job_id)) == {}  # cleared at the end


ENVIRONMENT_TEMPLATE = """
specificationVersion: jobtemplate-2023-09
name: Environment
parameterDefinitions:
- {name: Out, type: STRING}
steps:
- name: Print
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1"}
  script:
    actions:
      onRun: {command: sh, args: ["-c", "env | sed 's/^/env: /'"]}
"""


def test_a_sessions_actions_get_none_of_the_nodes_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """openjd-sessions starts an action with the worker's environment plus the session's:
    the node's credential, the farm's settings and a broker URL with its password must
    be unset there, not merely left out; what renderers need stays."""
    secrets = {
        "RENDERFARM_NODE_TOKEN": "node-token-8c1d0e9f2a7b",
        "RENDERFARM_BROKER_URL": "redis://:broker-pw-41af@127.0.0.1:6379/0",
        "CELERY_BROKER_URL": "redis://default:broker-pw-41af@127.0.0.1:6379/0",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-77e0",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OCIO", "/studio/config.ocio")  # a renderer's, which it keeps
    message = openjd_message(yaml.safe_load(ENVIRONMENT_TEMPLATE), tmp_path, "1")
    assert run_chunk(message, tmp_path, "node-1", lambda _event: None)
    log = (tmp_path / message.log_path).read_text()
    environment = [line for line in log.splitlines() if line.startswith("env: ")]
    assert "env: OCIO=/studio/config.ocio" in environment, log
    assert [line for line in environment if line.split("=")[0][5:] in secrets] == []
    assert not any(value in log for value in secrets.values())


NOTIFIED = """
specificationVersion: jobtemplate-2023-09
name: Notified
parameterDefinitions:
- {name: Out, type: STRING}
steps:
- name: Save
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1"}
  script:
    actions:
      onRun:
        command: "{{Task.File.Save}}"
        cancelation: CANCELATION
    embeddedFiles:
    - name: Save
      type: TEXT
      runnable: true
      data: |
        #!/bin/bash
        trap 'echo "saved on notice" > "{{Param.Out}}/notice"; exit 1' TERM
        echo $$ > "{{Param.Out}}/ready"
        while true; do sleep 0.1; done
"""


@pytest.mark.parametrize(
    ("cancelation", "notified"),
    [
        ("{mode: NOTIFY_THEN_TERMINATE, notifyPeriodInSeconds: 20}", True),
        ("{mode: TERMINATE}", False),
    ],
)
def test_a_cancel_goes_as_the_template_says_notify_then_terminate_or_terminate(
    tmp_path: Path, cancelation: str, notified: bool
) -> None:
    template = yaml.safe_load(NOTIFIED.replace("CANCELATION", cancelation))
    job, tasks = step_tasks(template, tmp_path, "1")
    (tmp_path / "sessions").mkdir()
    session = session_of(job, tmp_path / "sessions", io.StringIO())
    runner, raised = run_in_thread(session, tasks)
    wait_for(lambda: (tmp_path / "ready").exists(), 30, "the task to start")
    session.cancel()
    runner.join(15)  # within the notify period: the task ends on the notice, or is killed
    assert not runner.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], SessionCancelled)
    assert (tmp_path / "notice").exists() is notified


# A Celery pool process as billiard makes it: its SIGTERM (a revoke) raises SystemExit.
POOL_WORKER = """
import json, signal, sys
from pathlib import Path
from scheduler.wire.messages import ChunkMessage
from workers.runner import run_chunk
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(-(256 - signum)))
message = ChunkMessage.from_dict(json.loads(sys.argv[1]))
run_chunk(message, Path(sys.argv[2]), "node-1", lambda event: None)
"""


def test_a_revoked_attempt_notifies_its_task_as_the_template_says_then_leaves_nothing(
    tmp_path: Path,
) -> None:
    template = yaml.safe_load(
        NOTIFIED.replace("CANCELATION", "{mode: NOTIFY_THEN_TERMINATE, notifyPeriodInSeconds: 20}")
    )
    message = openjd_message(template, tmp_path, "1")
    worker = subprocess.Popen(
        [sys.executable, "-c", POOL_WORKER, json.dumps(message.to_dict()), str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), 30, "the task to start")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) != 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert (tmp_path / "notice").read_text() == "saved on notice\n"  # it was told first
    task = int((tmp_path / "ready").read_text())
    wait_for(lambda: not psutil.pid_exists(task), 10, "the task's process to be gone")
