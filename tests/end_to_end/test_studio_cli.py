"""The studio's command line against the real farm: `renderfarm submit` sends a Blender
scene built with bpy in a folder of the studio's own (not the farm's), the farm renders
it on two nodes, `renderfarm download` brings the frames back; a second submission sends
nothing; files outside the project, a wrong key and an absent farm are refused with a
message, never a traceback.

Skips without Blender (bpy or a blender executable) unless RENDERFARM_REQUIRE_BLENDER=1.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image
from sqlalchemy.engine import Engine

from scheduler.launch import studio
from scheduler.settings import Settings
from tests.conftest import Processes, farm_env, free_port, wait_for
from tests.integration.test_blender import HEIGHT, WIDTH, build_scene, require_blender
from workers.renderers.blender import Blender

pytestmark = pytest.mark.end_to_end

OUTSIDE_SCENE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import bpy

    spec = json.loads(sys.argv[-1])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    image = bpy.data.images.new("wood", 4, 4)
    image.filepath_raw = spec["texture"]  # absolute, and kept so: no relative remap
    image.file_format = "PNG"
    image.save()
    image.use_fake_user = True
    bpy.ops.wm.save_as_mainfile(filepath=spec["path"], relative_remap=False)
    """
)


@pytest.fixture(scope="module")
def blender() -> Blender:
    return require_blender()


def renderfarm(
    *args: str, api: str, key: str | None, home: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The CLI as a studio runs it: the farm's URL and key in its environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERFARM_")}
    env.update(RENDERFARM_API_URL=api, XDG_CONFIG_HOME=str(home), COLUMNS="200")
    if key is not None:
        env["RENDERFARM_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "scheduler.launch.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home,
    )


def api_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def farm(
    processes: Processes, settings: Settings, engine: Engine, broker: redis.Redis
) -> Iterator[tuple[str, str]]:
    """An API, a scheduler and two Blender nodes; the farm's URL and a studio's key."""
    port = free_port()
    processes.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    processes.start("scheduler", "scheduler")
    processes.worker("node-1")
    processes.worker("node-2")
    key = subprocess.run(
        [sys.executable, "-m", "scheduler.launch.cli", "studio", "create", "studio-cli"],
        env=farm_env(settings),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: api_up(url), 60, "the API to answer")
    headers = {"Authorization": f"Bearer {key}"}

    def blender_nodes() -> bool:
        nodes = httpx.get(f"{url}/v1/nodes", headers=headers).json()
        return len([n for n in nodes if "blender-4.5" in n.get("tags", [])]) == 2

    wait_for(blender_nodes, 90, "two nodes with Blender online")
    yield url, key


def test_submit_render_download_and_resubmit(
    farm: tuple[str, str], blender: Blender, tmp_path: Path
) -> None:
    url, key = farm
    home = tmp_path / "studio"  # the studio's disk: not the farm's storage
    scene = build_scene(blender, home / "shots/sq010/sh020.blend")

    first = renderfarm(
        "submit", str(scene), "--frames", "1-4", "--chunk-size", "2", "--wait",
        api=url, key=key, home=home, timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    assert "sent 2 files" in first.stdout  # the scene and its texture
    job_id = int(re.search(r"job (\d+) submitted", first.stdout)[1])  # type: ignore[index]
    assert f"job {job_id} done: 4/4 frames" in first.stdout

    frames_dir = tmp_path / "frames"
    downloaded = renderfarm(
        "download", str(job_id), "--to", str(frames_dir), api=url, key=key, home=home
    )
    assert downloaded.returncode == 0, downloaded.stdout + downloaded.stderr
    files = sorted(frames_dir.iterdir())  # named by the farm, in frame order
    assert len(files) == 4 and {f.suffix for f in files} == {".png"}, files
    assert "4 frames" in downloaded.stdout
    images = []
    for path in files:
        with Image.open(path) as image:
            assert image.size == (WIDTH, HEIGHT), path
            images.append(np.asarray(image.convert("RGB"), dtype=np.int16))
    assert np.abs(images[0] - images[3]).max() > 50  # the cube moved
    green = images[0][..., 1] - np.maximum(images[0][..., 0], images[0][..., 2])
    assert (green > 40).mean() > 0.1  # the floor's texture travelled with the scene

    again = renderfarm(
        "submit", str(scene), "--frames", "1-4", "--priority", "10", "--name", "again",
        "--show", "Mulan 2", "--sequence", "sq010", "--shot", "sh020", "--artist", "li.wei",
        api=url, key=key, home=home,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "sent 0 files, 0 B; 2 unchanged" in again.stdout
    second = int(re.search(r"job (\d+) submitted", again.stdout)[1])  # type: ignore[index]
    cancelled = renderfarm("cancel", str(second), api=url, key=key, home=home)
    assert cancelled.returncode == 0 and f"job {second} cancelled" in cancelled.stdout

    # A profile written by login serves the commands given neither flag nor variable.
    logged_in = renderfarm("login", "--api", url, "--key", key, api="", key=None, home=home)
    assert logged_in.returncode == 0, logged_in.stderr
    profile = home / "renderfarm/profile.toml"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    listed = renderfarm("jobs", api="", key=None, home=home)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:] if line}
    assert rows[str(job_id)][2:5] == ["-", "done", "4/4"]
    assert rows[str(second)][1:5] == ["again", "Mulan", "2/sq010/sh020", "cancelled"]
    of_shot = renderfarm("jobs", "--shot", "sh020", "--artist", "li.wei", api="", key=None,
                         home=home)  # fmt: skip
    assert [line.split()[0] for line in of_shot.stdout.splitlines()[1:] if line] == [str(second)]


def test_a_texture_outside_the_project_is_refused(blender: Blender, tmp_path: Path) -> None:
    texture = tmp_path / "elsewhere/wood.png"
    texture.parent.mkdir()
    scene = tmp_path / "project/shot.blend"
    scene.parent.mkdir()
    script = tmp_path / "make_scene.py"
    script.write_text(OUTSIDE_SCENE_SCRIPT)
    spec = json.dumps({"path": str(scene), "texture": str(texture)})
    argv = (
        [sys.executable, str(script), spec]
        if blender.executable is None
        else [blender.executable, "-b", "--factory-startup", "--python", str(script), "--", spec]
    )
    made = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0 and scene.is_file(), made.stdout + made.stderr

    # Refused before the farm is asked anything: no farm needs to answer.
    refused = renderfarm(
        "submit", str(scene), "--frames", "1", api="http://127.0.0.1:9", key="rf_x", home=tmp_path
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert str(texture) in refused.stderr and "outside the project" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_wrong_key_or_no_farm_is_a_message(
    processes: Processes, engine: Engine, tmp_path: Path
) -> None:
    port = free_port()
    processes.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: api_up(url), 60, "the API to answer")
    said = httpx.get(f"{url}/v1/jobs", headers={"Authorization": "Bearer rf_wrong"}).json()

    wrong = renderfarm("jobs", api=url, key="rf_wrong", home=tmp_path)
    assert wrong.returncode == 1
    assert said["detail"] in wrong.stderr and "Traceback" not in wrong.stderr

    absent = renderfarm("watch", "1", api=f"http://127.0.0.1:{free_port()}", key="k", home=tmp_path)
    assert absent.returncode == 1
    assert "cannot reach the farm" in absent.stderr and "Traceback" not in absent.stderr


def test_download_frame_by_frame_from_a_farm_without_archives(tmp_path: Path) -> None:
    """A farm whose API predates ``GET /v1/jobs/{id}/output`` (Starlette's bare 404):
    each finished frame is fetched on its own, named by the farm, streamed to a file."""
    frames = [
        {"frame": 1, "state": "done", "output_url": "/v1/jobs/7/frames/1/output"},
        {"frame": 2, "state": "failed", "output_url": None},
        {"frame": 3, "state": "done", "output_url": "/v1/jobs/7/frames/3/output"},
    ]

    def farm(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/jobs/7":
            return httpx.Response(200, json={"id": 7})
        if path == "/v1/jobs/7/frames":
            return httpx.Response(200, json=frames)
        if path.endswith("/1/output"):
            named = {"content-disposition": 'inline; filename="../frame_000001.exr"'}
            return httpx.Response(200, content=b"exr", headers=named)
        if path.endswith("/3/output"):
            return httpx.Response(200, content=b"png", headers={"content-type": "image/png"})
        return httpx.Response(404, json={"detail": "Not Found"})

    api = studio.Api(studio.Profile("http://farm", "rf_k"), transport=httpx.MockTransport(farm))
    written = studio.download_frames(api, 7, tmp_path / "out")
    assert [p.name for p in written] == ["frame_000001.exr", "frame_0003.png"]
    assert [p.read_bytes() for p in written] == [b"exr", b"png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in written]
