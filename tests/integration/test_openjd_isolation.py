"""A studio's OpenJD template run as the node's unprivileged job user (``renderfarm worker
--run-as USER``): real sessions whose commands reach for the node's secrets, its storage
root and cache, and another session's folder, and get none of them, while what they may
do (write in their own session's folder) works. A cancelled or terminated run-as
session leaves no process of that user.

The node's files are laid out as a real node's would be, in a folder others may pass
through (so only the node's own modes keep the job user out): its data folder, storage
root and cache 0700 (``equip_job_user`` makes them so, or refuses to start), a 0600
``.env`` with its node token.

The tests need root (to create the user ``renderfarm-job``, with bash as its shell, where
it is missing, and to run commands as it through sudo) and skip without it, or without
useradd or sudo; ``RENDERFARM_REQUIRE_RUN_AS=1`` (CI) makes them fail there instead.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from scheduler.launch.cli import app as cli
from scheduler.settings import Settings
from scheduler.wire.messages import ChunkMessage, FailedEvent, FinishedEvent, decode_event
from scheduler.wire.openjd import StepTasks
from tests.conftest import wait_for
from workers.job_user import JOB_USER, RunAsUnavailable, equip_job_user, find_job_user
from workers.runner import run_chunk

pytestmark = pytest.mark.integration

USER = "renderfarm-job"
OTHER_USER = "renderfarm-job2"  # a second slot's
TOKEN = "node-token-3f9a1c77e5d2b804"  # stands for the node's credential
PASSWORD = "broker-password-5be21d0c"  # the broker's, in its URL


def require_run_as() -> None:
    """Skip (fail under ``RENDERFARM_REQUIRE_RUN_AS=1``) where this host cannot run
    commands as another user; create the job user where it is missing."""
    why = None
    if os.geteuid() != 0:
        why = "the tests create a user and run commands as it: they need root"
    elif shutil.which("useradd") is None:
        why = "no useradd to create the job user"
    elif shutil.which("sudo") is None:
        why = "no sudo to run commands as the job user (apt install sudo)"
    if why is not None:
        if os.environ.get("RENDERFARM_REQUIRE_RUN_AS") == "1":
            pytest.fail(f"RENDERFARM_REQUIRE_RUN_AS=1 but {why}")
        pytest.skip(why)
    require_user(USER)


def require_user(name: str) -> None:
    """The user ``name``, created where it is missing, with bash as its shell (one that
    runs sudo's -c command in its place)."""
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        shell = ["--shell", "/bin/bash"]
        subprocess.run(["useradd", "--system", "--no-create-home", *shell, name], check=True)


@dataclass(frozen=True)
class Node:
    """A node's own files, where its job user could reach them but for their modes."""

    host: Path  # 0755: anyone passes
    data: Path
    storage: Path
    cache: Path
    env_file: Path
    token: Path
    scene: Path


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    """The job user equipped as a node equips it (``equip_job_user``), the node's files
    laid out, and its secrets in this process's environment, as a worker's are."""
    require_run_as()
    assert user_processes() == [], f"processes of {USER} were running before the test"
    host = Path(tempfile.mkdtemp(prefix="renderfarm-node-"))
    host.chmod(0o755)
    node = Node(
        host, host / "data", host / "data" / "storage", host / "cache", host / ".env",
        host / "data" / "node-token", host / "data" / "storage" / "blobs" / "ab" / "scene.blend",
    )  # fmt: skip
    node.env_file.write_text(f"RENDERFARM_NODE_TOKEN={TOKEN}\n")
    node.env_file.chmod(0o600)
    equip_job_user(USER, [node.data, node.storage, node.cache], [node.env_file])
    node.token.write_text(TOKEN)
    node.token.chmod(0o600)
    node.scene.parent.mkdir(parents=True)
    node.scene.write_text("a studio's scene")
    (node.cache / "ab").mkdir()
    (node.cache / "ab" / "blob").write_text("another studio's scene")
    monkeypatch.setenv("RENDERFARM_NODE_TOKEN", TOKEN)
    monkeypatch.setenv("RENDERFARM_BROKER_URL", f"redis://:{PASSWORD}@127.0.0.1:6379/0")
    monkeypatch.setenv("CELERY_BROKER_URL", f"redis://default:{PASSWORD}@127.0.0.1:6379/0")
    monkeypatch.setenv("HOME", "/root")  # the node user's, which the job user's replaces
    monkeypatch.setenv("USER", "root")
    try:
        yield node
    finally:
        JOB_USER.use([])
        shutil.rmtree(host, ignore_errors=True)


def user_processes() -> list[psutil.Process]:
    """The job user's processes on this host, whatever started them."""
    uid = find_uid(USER)
    found = []
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is not None and uid in (uids.real, uids.effective):
            found.append(process)
    return found


def find_uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


# A task that reaches for what it must not have, and does what it may; "probe NAME: yes"
# where it got it. Its session's folder is where it starts.
PROBE = """
specificationVersion: jobtemplate-2023-09
name: Reach
parameterDefinitions:
- {name: Token, type: STRING}
- {name: EnvFile, type: STRING}
- {name: Storage, type: STRING}
- {name: Scene, type: STRING}
- {name: Cache, type: STRING}
- {name: OtherRoot, type: STRING}
steps:
- name: Probe
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1"}
  script:
    actions:
      onRun: {command: "{{Task.File.Probe}}"}
    embeddedFiles:
    - name: Probe
      type: TEXT
      runnable: true
      data: |
        #!/bin/sh
        probe() {
          name=$1; shift
          if "$@" >/dev/null 2>&1; then echo "probe $name: yes"; else echo "probe $name: no"; fi
        }
        echo "probe user: $(id -un)"
        probe token cat '{{Param.Token}}'
        probe env-file cat '{{Param.EnvFile}}'
        probe storage ls '{{Param.Storage}}'
        probe scene cat '{{Param.Scene}}'
        probe cache ls '{{Param.Cache}}'
        probe other-root ls '{{Param.OtherRoot}}'
        probe other-secret sh -c 'cat {{Param.OtherRoot}}/*/secret'
        probe own-folder sh -c 'echo mine > written && test "$(cat written)" = mine'
        env | sed 's/^/env: /'
"""

# A session that keeps a secret in its folder and runs until the gate opens.
KEEPER = """
specificationVersion: jobtemplate-2023-09
name: Keeper
parameterDefinitions:
- {name: Gate, type: STRING}
steps:
- name: Keep
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1"}
  script:
    actions:
      onRun:
        command: sh
        args:
        - "-c"
        - |
          echo "kept by $(id -un)" > secret
          echo "session-folder: $(pwd)"
          until [ -e '{{Param.Gate}}' ]; do sleep 0.05; done
"""

SLEEPER = """
specificationVersion: jobtemplate-2023-09
name: Sleeper
steps:
- name: Sleep
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1-2"}
  script:
    actions:
      onRun: {command: sleep, args: ["300"]}
"""


def chunk(
    template: str, parameters: dict[str, str], frames: list[int], chunk_id: int, timeout: float = 60
) -> ChunkMessage:
    settings = {"template": yaml.safe_load(template), "parameters": parameters, "step": 0}
    return ChunkMessage(
        chunk_id=chunk_id, attempt=1, job_id=7, pool="cpu", frames=frames, renderer="openjd",
        settings=settings, tasks=StepTasks().of(7, settings, 1, frames),
        output_pattern="jobs/7/frames/f_{frame}", log_path=f"jobs/7/logs/chunk-{chunk_id}.log",
        timeout=timeout,
    )  # fmt: skip


def log_of(node: Node, message: ChunkMessage) -> str:
    return (node.storage / message.log_path).read_text()


def test_a_template_run_as_the_job_user_gets_none_of_the_nodes_files_but_its_own_folder(
    node: Node,
) -> None:
    gate = node.host / "gate"
    keeper = chunk(KEEPER, {"Gate": str(gate)}, [1], chunk_id=1)
    kept: list[dict[str, Any]] = []
    other = threading.Thread(
        target=run_chunk, args=(keeper, node.storage, "node-1", kept.append), daemon=True
    )
    other.start()
    try:
        folder = wait_for(lambda: _session_folder(node, keeper), 30, "the other session's folder")
        assert (folder / "secret").read_text() == f"kept by {USER}\n"  # the node reads it
        probe = chunk(PROBE, _targets(node, folder.parent), [1], chunk_id=2)
        events: list[dict[str, Any]] = []
        assert run_chunk(probe, node.storage, "node-1", events.append), log_of(node, probe)
    finally:
        gate.touch()
        other.join(60)
    assert isinstance(decode_event(kept[-1]), FinishedEvent)
    log = log_of(node, probe)
    probes = dict(re.findall(r"^probe (\S+): (\S+)$", log, re.MULTILINE))
    assert probes == {
        "user": USER,
        "token": "no",  # the node's credential, 0600 in its data folder
        "env-file": "no",  # its .env, 0600 in a folder anyone passes
        "storage": "no",
        "scene": "no",
        "cache": "no",
        "other-root": "no",  # another session's root: not to be listed
        "other-secret": "no",  # so its folder is not to be found
        "own-folder": "yes",  # the control: the session's own folder is its own
    }, log
    environment = [line for line in log.splitlines() if line.startswith("env: ")]
    assert environment, log
    assert not [line for line in environment if line.startswith("env: RENDERFARM_")]
    assert TOKEN not in log and PASSWORD not in log
    assert f"env: USER={USER}" in environment  # its login's, not the node's
    assert f"env: HOME={pwd.getpwnam(USER).pw_dir}" in environment


def _session_folder(node: Node, message: ChunkMessage) -> Path | None:
    """The folder the session's task said it runs in, once it did."""
    path = node.storage / message.log_path
    found = re.search(r"^session-folder: (\S+)$", path.read_text(), re.M) if path.exists() else None
    return Path(found.group(1)) if found else None


def _targets(node: Node, other_root: Path) -> dict[str, str]:
    return {
        "Token": str(node.token),
        "EnvFile": str(node.env_file),
        "Storage": str(node.storage),
        "Scene": str(node.scene),
        "Cache": str(node.cache),
        "OtherRoot": str(other_root),
    }


# Sessions of one job user can find each other's folders through their processes,
# whose working directory /proc shows to their own user. With a user per session
# (--run-as a,b), a session holds a user no other session of the node holds.
FINDER = """
specificationVersion: jobtemplate-2023-09
name: Finder
steps:
- name: Find
  parameterSpace:
    taskParameterDefinitions:
    - {name: Frame, type: INT, range: "1"}
  script:
    actions:
      onRun:
        command: sh
        args:
        - "-c"
        - |
          for process in /proc/[0-9]*; do
            folder=$(readlink "$process/cwd" 2>/dev/null) || continue
            if [ "$folder" != "$(pwd)" ] && cat "$folder/secret" 2>/dev/null; then exit 0; fi
          done
          echo "found no other session's secret"
"""


def _finder_beside_keeper(node: Node) -> tuple[ChunkMessage, ChunkMessage]:
    """A keeper session and, while it runs, a finder session on the same node; both
    messages, for their logs."""
    gate = node.host / "gate"
    keeper = chunk(KEEPER, {"Gate": str(gate)}, [1], chunk_id=1)
    other = threading.Thread(
        target=run_chunk, args=(keeper, node.storage, "node-1", lambda _: None), daemon=True
    )
    other.start()
    try:
        wait_for(lambda: _session_folder(node, keeper), 30, "the other session's folder")
        finder = chunk(FINDER, {}, [1], chunk_id=2)
        assert run_chunk(finder, node.storage, "node-1", lambda _: None)
    finally:
        gate.touch()
        other.join(60)
    return keeper, finder


def test_sessions_at_once_hold_users_of_their_own_and_cannot_reach_each_other(
    node: Node,
) -> None:
    require_user(OTHER_USER)
    equip_job_user(f"{USER},{OTHER_USER}", [node.data, node.storage, node.cache], [], slots=2)
    keeper, finder = _finder_beside_keeper(node)
    assert f"as {USER}" in log_of(node, keeper).splitlines()[0]
    assert f"as {OTHER_USER}" in log_of(node, finder).splitlines()[0]
    assert "kept by" not in log_of(node, finder)
    assert "found no other session's secret" in log_of(node, finder)


def test_with_one_user_sessions_at_once_can_reach_each_other_so_the_node_warns(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """What one user for several slots leaves open, and why the node says so."""
    with caplog.at_level("WARNING"):
        equip_job_user(USER, [node.data, node.storage, node.cache], [], slots=2)
    assert "1 job user(s) for 2 slots" in caplog.text
    _keeper, finder = _finder_beside_keeper(node)
    assert f"kept by {USER}" in log_of(node, finder)


def test_a_run_as_session_past_its_time_limit_leaves_no_process_of_the_job_user(
    node: Node,
) -> None:
    message = chunk(SLEEPER, {}, [1, 2], chunk_id=3, timeout=2.0)
    events: list[dict[str, Any]] = []
    outcome: list[bool] = []
    runner = threading.Thread(
        target=lambda: outcome.append(run_chunk(message, node.storage, "n", events.append))
    )
    runner.start()
    sleeping = wait_for(_job_sleepers, 30, "the task to sleep as the job user")
    assert all(p.uids().real == find_uid(USER) for p in sleeping)
    runner.join(60)
    assert outcome == [False]
    failed = decode_event(events[-1])
    assert isinstance(failed, FailedEvent) and "time limit" in failed.error
    wait_for(lambda: user_processes() == [], 10, f"{USER}'s processes to be gone")


def _job_sleepers() -> list[psutil.Process]:
    return [p for p in user_processes() if _cmdline(p)[-2:] == ["sleep", "300"]]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return list(process.cmdline())
    except psutil.Error:
        return []


WORKER = """
import json, sys
from pathlib import Path
from scheduler.wire.messages import ChunkMessage
from workers.job_user import equip_job_user
from workers.runner import install_termination_handler, run_chunk
install_termination_handler()
equip_job_user(sys.argv[3])
message = ChunkMessage.from_dict(json.loads(sys.argv[1]))
run_chunk(message, Path(sys.argv[2]), "node-1", lambda event: None)
"""


def test_a_worker_terminated_mid_task_leaves_no_process_of_the_job_user(node: Node) -> None:
    """Celery's revoke with terminate sends the worker SIGTERM: the session's actions,
    run as the job user through sudo, die with it."""
    message = chunk(SLEEPER, {}, [1, 2], chunk_id=4)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(message.to_dict()), str(node.storage), USER],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        wait_for(_job_sleepers, 30, "the task to sleep as the job user")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 128 + signal.SIGTERM
    finally:
        if worker.poll() is None:
            worker.kill()
    wait_for(lambda: user_processes() == [], 10, f"{USER}'s processes to be gone")


# The node's checks as it starts.


def said(output: str) -> str:
    """The command's words, with the console's line breaks undone."""
    return " ".join(output.split())


def test_a_node_refuses_to_start_as_a_user_it_cannot_run_as(
    settings: Settings, tmp_path: Path
) -> None:
    require_run_as()
    env = {
        "RENDERFARM_BROKER_URL": settings.effective_broker_url,
        "RENDERFARM_DATA_DIR": str(tmp_path),
        "RENDERFARM_ENERGY_METER": "off",
        "RENDERFARM_SANDBOX": "off",
    }
    missing = ["worker", "--name", "n1", "--run-as", "renderfarm-nobody"]
    result = CliRunner().invoke(cli, missing, env=env)
    assert result.exit_code == 2, result.output
    assert "run as renderfarm-nobody: no user 'renderfarm-nobody'" in said(result.output)
    result = CliRunner().invoke(cli, ["worker", "--name", "n1", "--run-as", "root"], env=env)
    assert result.exit_code == 2 and "'root' is root" in said(result.output), result.output
    assert JOB_USER.user is None


@pytest.mark.parametrize(
    ("shell", "refusal"),
    [
        ("/usr/sbin/nologin", "cannot run commands as 'renderfarm-shell'"),  # no login at all
        ("/bin/dash", "stays between sudo and the commands it runs"),  # no cancel
    ],
)
def test_a_node_refuses_a_user_whose_login_shell_would_not_run_or_cancel_its_commands(
    shell: str, refusal: str
) -> None:
    """openjd-sessions runs an action through sudo in the user's login shell, and
    cancels it by signalling the process group of sudo's child: ``nologin`` runs
    nothing, and dash stays that child, its command out of reach."""
    require_run_as()
    if not Path(shell).exists():
        pytest.skip(f"no {shell} here")
    name = "renderfarm-shell"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", shell, name], check=True)
    try:
        with pytest.raises(RunAsUnavailable, match=refusal):
            find_job_user(name)
    finally:
        subprocess.run(["userdel", name], check=True)


def test_a_node_refuses_to_start_where_its_own_files_are_open_to_the_job_user(
    settings: Settings,
) -> None:
    require_run_as()
    host = Path(tempfile.mkdtemp(prefix="renderfarm-node-"))
    try:
        host.chmod(0o755)
        (host / "data").mkdir(mode=0o755)  # as mkdir leaves it under the usual umask
        env = {
            "RENDERFARM_BROKER_URL": settings.effective_broker_url,
            "RENDERFARM_DATA_DIR": str(host / "data"),
            "RENDERFARM_ENERGY_METER": "off",
            "RENDERFARM_SANDBOX": "off",
            "RENDERFARM_RUN_AS": USER,
        }
        result = CliRunner().invoke(cli, ["worker", "--name", "n1"], env=env)
        assert result.exit_code == 2, result.output
        assert f"{host / 'data'} (drwxr-xr-x) is open to {USER}" in said(result.output)
        assert JOB_USER.user is None
    finally:
        shutil.rmtree(host, ignore_errors=True)
