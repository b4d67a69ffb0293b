"""``renderfarm up`` prints the command that creates a studio key for the farm it runs,
and that command, run from any folder, gives a key the running farm accepts."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.end_to_end


def test_the_key_command_up_prints_works_from_another_folder(tmp_path: Path) -> None:
    farm_dir, elsewhere = tmp_path / "farm", tmp_path / "elsewhere"
    farm_dir.mkdir()
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERFARM_")}
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "scheduler.launch.cli", "up", "--port", str(port),
         "--workers", "1"],
        cwd=farm_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while not any("Ctrl-C stops" in line for line in lines):
            assert time.monotonic() < deadline and up.poll() is None, lines
            lines.append(up.stdout.readline())
        [command] = [line.strip() for line in lines if "renderfarm studio create NAME" in line]
        assert command.startswith(f"RENDERFARM_DATA_DIR={farm_dir}/renderfarm-data ")
        variable, *rest = shlex.split(command.replace("NAME", "pixel-east"))
        name, value = variable.split("=", 1)
        made = subprocess.run(
            [sys.executable, "-m", "scheduler.launch.cli", *rest[1:]],
            cwd=elsewhere, env={**env, name: value}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        answer = httpx.get(
            f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 200, answer.text
        assert not (elsewhere / "renderfarm-data").exists()  # no second farm was made
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
