"""The studio's command line submits an OpenJD template to a real farm (API, scheduler,
a node): the example template in examples/templates, its plate attached from a folder
of the studio's, its PATH parameter mapped onto the node's copy; both steps render, in
order, and ``--wait`` follows them to the end."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.engine import Engine

from scheduler.settings import Settings
from tests.conftest import Processes, farm_env, free_port, wait_for
from tests.end_to_end.test_studio_cli import api_up, renderfarm

pytestmark = pytest.mark.end_to_end

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/templates/render-and-encode.yaml"


@pytest.fixture
def farm(
    processes: Processes, settings: Settings, engine: Engine, broker: redis.Redis
) -> Iterator[tuple[str, str]]:
    """An API, a scheduler and a node; the farm's URL and the key of a studio that may
    submit templates."""
    port = free_port()
    processes.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    processes.start("scheduler", "scheduler")
    processes.worker("node-1", slots=2)
    key = subprocess.run(
        [sys.executable, "-m", "scheduler.launch.cli", "studio", "create", "comp-east",
         "--allow-templates"],
        env=farm_env(settings), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: api_up(url), 60, "the API to answer")
    headers = {"Authorization": f"Bearer {key}"}
    wait_for(lambda: httpx.get(f"{url}/v1/nodes", headers=headers).json(), 60, "the node")
    yield url, key


def test_the_example_template_renders_with_its_attached_plate_mapped_on_the_node(
    farm: tuple[str, str], tmp_path: Path
) -> None:
    url, key = farm
    home = tmp_path / "studio"
    shot = home / "sh010"
    shot.mkdir(parents=True)
    (shot / "plate.txt").write_text("plate of sh010\n")
    out = tmp_path / "out"  # stands for a folder the nodes and the studio share
    submitted = renderfarm(
        "submit", str(EXAMPLE), "--attach", str(shot), "-p", f"Plate={shot}/plate.txt",
        "-p", f"Out={out}", "-p", "Frames=1-6", "--chunk-size", "3", "--wait",
        api=url, key=key, home=home, timeout=180,
    )  # fmt: skip
    said = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, said
    assert "Traceback" not in said
    assert "sent 1 files" in said
    assert re.search(r"template \d+ submitted: sh010 render and encode", said), said
    assert "Render, 6 tasks" in said and "Encode, 1 tasks" in said
    frames = sorted(out.glob("frame-*.txt"))
    assert [f.name for f in frames] == [f"frame-{n:04d}.txt" for n in range(1, 7)]
    assert frames[0].read_text() == "frame 1 of sh010\nplate of sh010\n"  # the node's copy
    assert (out / "sh010.txt").read_text().count("plate of sh010") == 6  # encoded after all


def test_a_template_the_farm_refuses_is_a_message_at_its_place(
    farm: tuple[str, str], tmp_path: Path
) -> None:
    url, key = farm
    broken = tmp_path / "broken.yaml"
    broken.write_text(EXAMPLE.read_text().replace("type: INT", "type: INTEGER"))
    refused = renderfarm("submit", str(broken), api=url, key=key, home=tmp_path)
    assert refused.returncode == 1
    assert "template.steps.0.parameterSpace" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    missing = renderfarm("submit", str(EXAMPLE), api=url, key=key, home=tmp_path)
    assert missing.returncode == 1
    assert "parameters" in missing.stderr and "Plate" in missing.stderr, missing.stderr
    bad = renderfarm("submit", str(EXAMPLE), "-p", "Plate", api=url, key=key, home=tmp_path)
    assert bad.returncode == 2 and "-p Plate: write NAME=VALUE" in bad.stderr
