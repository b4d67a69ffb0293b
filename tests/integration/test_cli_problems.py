"""The command line answers the usual mistakes with one clear line and a non-zero exit
status, never a traceback, and says them before it starts anything: a database URL
that cannot work, a farm database that is not where an operator command looks, a
setting that does not hold, a frame spec that does not read, a broker that does not
answer, a busy port; and its help reads at 80 columns."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def renderfarm(
    *args: str, cwd: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RENDERFARM_")}
    return subprocess.run(
        [sys.executable, "-m", "scheduler.launch.cli", *args],
        cwd=cwd, env={**clean, "COLUMNS": "80", **env}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    said = (result.stdout + result.stderr).strip()
    assert "Traceback" not in said and "╭" not in said, said
    assert len(said.splitlines()) == 1, said
    return said


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("foo://db", "SQLAlchemy knows no database kind 'foo'"),
        ("mysql://127.0.0.1:1/farm", "needs the Python driver MySQLdb, which is not installed"),
        ("not a url", "RENDERFARM_DATABASE_URL is not a database URL"),
        ("postgresql+psycopg://farm:s3cret@127.0.0.1:1/x", "cannot reach the database"),
        ("postgresql+psycopg://farm:s3cret@db:port/x", "is not a database URL"),
    ],
)
def test_a_database_url_that_cannot_work_is_one_line(tmp_path: Path, url: str, words: str) -> None:
    result = renderfarm("studio", "list", cwd=tmp_path, RENDERFARM_DATABASE_URL=url)
    assert result.returncode == 2
    said = one_line(result)
    assert words in said and "s3cret" not in said  # never the password


def test_an_operator_command_away_from_the_farm_does_not_make_a_new_one(tmp_path: Path) -> None:
    result = renderfarm("studio", "create", "pixel-east", cwd=tmp_path)
    assert result.returncode != 0
    said = one_line(result)
    assert f"no farm here: {tmp_path}/renderfarm-data/renderfarm.db does not exist" in said
    assert not (tmp_path / "renderfarm-data" / "renderfarm.db").exists()
    assert not result.stdout.startswith("rf_")  # no key the running farm would refuse


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["worker", "--energy-meter", "bogus"], {},
         "RENDERFARM_ENERGY_METER (--energy-meter): Input should be 'auto', 'rapl', 'model' "
         "or 'off', not 'bogus'"),
        (["worker"], {"RENDERFARM_SANDBOX": "maybe"}, "RENDERFARM_SANDBOX (--sandbox)"),
        (["studio", "list"], {"RENDERFARM_API_PORT": "http"}, "RENDERFARM_API_PORT: "),
        # what the scheduler could not store is refused at the node, not ignored there
        (["worker", "--name", "n" * 201], {}, "a node's name has 1 to 200 characters"),
        (["worker", "--pool", ""], {}, "a node's pool has 1 to 64 characters"),
    ],
)  # fmt: skip
def test_a_setting_that_does_not_hold_is_named_with_its_option(
    tmp_path: Path, args: list[str], env: dict[str, str], words: str
) -> None:
    result = renderfarm(*args, cwd=tmp_path, **env)
    assert result.returncode == 2
    assert words in one_line(result)


def test_a_secret_setting_that_does_not_hold_is_named_but_not_shown(tmp_path: Path) -> None:
    result = renderfarm("studio", "list", cwd=tmp_path, RENDERFARM_NODE_TOKEN="hunter2secret")
    assert result.returncode == 2
    said = one_line(result)
    assert "RENDERFARM_NODE_TOKEN" in said and "hunter2secret" not in said


def test_a_demo_frame_spec_that_does_not_read_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    result = renderfarm("demo", "--frames", "1-x", cwd=tmp_path)
    assert result.returncode != 0
    assert "--frames: cannot read '1-x'" in one_line(result)
    assert not (tmp_path / "renderfarm-data").exists()  # no farm was started


def test_a_demo_with_a_broker_that_does_not_answer_says_so_at_once(tmp_path: Path) -> None:
    result = renderfarm(
        "demo", cwd=tmp_path, timeout=30, RENDERFARM_BROKER_URL="redis://127.0.0.1:1/0"
    )  # it used to wait for ever on a job no scheduler could dispatch
    assert result.returncode == 2
    said = one_line(result)
    assert "cannot reach the broker (Redis) at redis://127.0.0.1:1/0" in said
    assert "unset RENDERFARM_BROKER_URL" in said


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as other:  # another program's server, answering or not
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_up_on_a_busy_port_says_so_and_starts_nothing(tmp_path: Path, busy_port: int) -> None:
    result = renderfarm("up", "--port", str(busy_port), cwd=tmp_path)
    assert result.returncode == 2
    assert f"port {busy_port} on 127.0.0.1 is in use by another program" in one_line(result)
    assert not (tmp_path / "renderfarm-data").exists()


@pytest.mark.parametrize(
    "command",
    [[], ["studio"], ["region"], ["region", "link"], ["submit"], ["worker"], ["plan"], ["up"]],
)
def test_help_reads_at_80_columns(tmp_path: Path, command: list[str]) -> None:
    result = renderfarm(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert len(line) <= 80, line
        assert "``" not in line, line  # no reStructuredText marks
    if not command:
        for panel in ("Studios", "Run the farm", "Operate the farm"):
            assert f"─ {panel} ─" in result.stdout
