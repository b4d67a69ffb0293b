"""Blender renders on the nodes: real scenes built with bpy, rendered for real.

The scene: a green-textured floor (an image in ``textures/``, referenced as
``//textures/green.png``), a red cube that slides across it over frames 1-4, a sphere, a
sun and a camera, at 64x36 with Cycles at 4 samples, so every render takes a fraction
of a second. It is saved under the farm's storage, where nodes find scenes for now.

These tests skip when this machine has neither the ``bpy`` module nor a ``blender``
executable; CI sets ``RENDERFARM_REQUIRE_BLENDER=1`` so that there they fail instead.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from PIL import Image
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.db import AttemptRow, FrameResultRow
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from scheduler.wire.messages import ChunkMessage, FailedEvent, FinishedEvent, decode_event
from tests.conftest import Processes, wait_for
from workers.renderers import BLENDER
from workers.renderers.blender import NO_BLENDER, Blender, BlenderUnavailable, find_blender
from workers.runner import run_chunk

pytestmark = pytest.mark.integration

WIDTH, HEIGHT = 64, 36
GREEN = (0.0, 1.0, 0.0)  # the texture's colour
SCENE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import bpy

    spec = json.loads(sys.argv[-1])
    out = Path(spec["path"])
    textures = out.parent / "textures"
    textures.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene

    image = bpy.data.images.new("green", 8, 8)
    image.pixels[:] = [*spec["texture"], 1.0] * 64
    image.filepath_raw = str(textures / "green.png")
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)

    def material(name, colour=None, texture=None):
        mat = bpy.data.materials.new(name)
        mat.use_nodes = True
        bsdf = mat.node_tree.nodes["Principled BSDF"]
        if texture:
            node = mat.node_tree.nodes.new("ShaderNodeTexImage")
            node.image = bpy.data.images.load(texture)
            mat.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
        else:
            bsdf.inputs["Base Color"].default_value = (*colour, 1.0)
        return mat

    bpy.ops.mesh.primitive_plane_add(size=40)
    floor = bpy.context.object
    floor.data.materials.append(material("floor", texture=str(textures / "green.png")))
    bpy.ops.mesh.primitive_cube_add(size=2, location=(-3, 0, 1))
    cube = bpy.context.object
    cube.data.materials.append(material("red", colour=(1.0, 0.0, 0.0)))
    for frame, x in ((1, -3.0), (4, 3.0)):
        cube.location.x = x
        cube.keyframe_insert("location", frame=frame)
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.7, location=(2, 2, 0.7))
    bpy.ops.object.camera_add(location=(0, -10, 6), rotation=(1.0, 0, 0))
    scene.camera = bpy.context.object
    scene.camera.name = "Main"
    bpy.ops.object.camera_add(location=(0, 0, 12), rotation=(0, 0, 0))
    bpy.context.object.name = spec["second_camera"]  # looks down on the floor only
    bpy.ops.object.light_add(type="SUN", location=(0, 0, 10))
    scene.frame_start, scene.frame_end = 1, 4
    scene.render.resolution_x, scene.render.resolution_y = spec["size"]
    scene.render.resolution_percentage = 100
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.render.image_settings.file_format = "PNG"
    if spec["script"]:  # a script inside the scene, run on load only where allowed
        text = bpy.data.texts.new("on_load.py")
        text.write(spec["script"])
        text.use_module = True
    bpy.ops.wm.save_as_mainfile(filepath=str(out), relative_remap=True)
    """
)
SECOND_CAMERA = "Top\"; __import__('os').system('touch PWNED'); x = \"'"


def require_blender() -> Blender:
    blender = find_blender(os.environ.get("RENDERFARM_BLENDER"))
    if blender is None:
        if os.environ.get("RENDERFARM_REQUIRE_BLENDER") == "1":
            pytest.fail("RENDERFARM_REQUIRE_BLENDER=1 but neither bpy nor blender is here")
        pytest.skip('no Blender here: pip install ".[blender]" (bpy) or put blender on PATH')
    return blender


@pytest.fixture(scope="module")
def blender() -> Blender:
    return require_blender()


@pytest.fixture
def node_blender(blender: Blender) -> Iterator[Blender]:
    """This process renders with the Blender found (as a node does once it started)."""
    BLENDER.use(blender)
    yield blender
    BLENDER.use(blender)


def build_scene(
    blender: Blender,
    path: Path,
    texture: tuple[float, float, float] = GREEN,
    script: str = "",
) -> Path:
    """Save the test scene at ``path`` with bpy, in a child process, as a studio would."""
    spec = json.dumps(
        {
            "path": str(path),
            "texture": texture,
            "size": [WIDTH, HEIGHT],
            "second_camera": SECOND_CAMERA,
            "script": script,
        }
    )
    script_file = path.parent / "make_scene.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    script_file.write_text(SCENE_SCRIPT)
    if blender.executable is None:
        argv = [sys.executable, str(script_file), spec]
    else:
        argv = [blender.executable, "-b", "--factory-startup", "--python", str(script_file)]
        argv += ["--python-exit-code", "1", "--", spec]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and path.is_file(), done.stdout + done.stderr
    script_file.unlink()
    return path


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory, blender: Blender) -> Path:
    """A farm's storage with the test scene at shots/sq010/sh020.blend."""
    root = tmp_path_factory.mktemp("storage")
    build_scene(blender, root / "shots/sq010/sh020.blend")
    return root


def chunk(job_id: int, frames: list[int], **settings: Any) -> ChunkMessage:
    return ChunkMessage(
        chunk_id=job_id, attempt=1, job_id=job_id, pool="cpu", frames=frames,
        renderer="blender", settings={"scene": "shots/sq010/sh020.blend", **settings},
        output_pattern=f"jobs/{job_id}/frames/frame_{{frame}}.png",
        log_path=f"jobs/{job_id}/logs/chunk-{job_id}-attempt-1.log", timeout=120,
    )  # fmt: skip


def blender_processes() -> list[psutil.Process]:
    """Blender children (the driver, or a blender executable) alive on this machine."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with_driver = "blender_driver.py" in " ".join(process.info["cmdline"] or [])
        if with_driver and process.pid != os.getpid():
            found.append(process)
    return found


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.size == (WIDTH, HEIGHT), path
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def green_share(frame: np.ndarray) -> float:
    """How much of the frame shows the texture: green well above red and blue."""
    r, g, b = frame[..., 0], frame[..., 1], frame[..., 2]
    return float(((g > r + 60) & (g > b + 60)).mean())


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


def test_a_chunk_renders_its_frames_from_one_blender_each_as_soon_as_saved(
    node_blender: Blender, storage: Path
) -> None:
    events: list[dict[str, Any]] = []
    on_disk_when_reported: list[bool] = []

    def emit(event: dict[str, Any]) -> None:
        if event["kind"] == "frame":
            on_disk_when_reported.append((storage / event["result"]["output"]).is_file())
        events.append(event)

    assert run_chunk(chunk(1, [1, 2, 3, 4]), storage, "node-1", emit), events[-1]
    assert [e["kind"] for e in events] == [
        "started",
        "frame",
        "frame",
        "frame",
        "frame",
        "finished",
    ]
    assert on_disk_when_reported == [True] * 4
    finished = decode_event(events[-1])
    assert isinstance(finished, FinishedEvent)
    assert [r.output for r in finished.results] == [
        f"jobs/1/frames/frame_{n:06d}.png" for n in range(1, 5)
    ]
    assert all(r.render_seconds > 0 and r.cpu_seconds > 0 for r in finished.results)
    frames = [pixels(storage / r.output) for r in finished.results if r.output]
    for before, after in itertools.pairwise(frames):  # the cube slides
        assert np.abs(before - after).mean() > 1.0
    assert all(green_share(frame) > 0.2 for frame in frames)  # the texture was found
    log = (storage / "jobs/1/logs/chunk-1-attempt-1.log").read_text()
    assert log.count("Read blend:") == 1  # the scene is loaded once for the chunk
    assert "Fra:4" in log and "renderfarm-warning" not in log
    assert blender_processes() == []


def test_overrides_change_the_render_and_stay_data(node_blender: Blender, storage: Path) -> None:
    """A camera named like code renders from that camera, and the code in its name runs
    nowhere; the engine, size and format are the job's."""
    events: list[dict[str, Any]] = []
    before = files_under(storage)
    settings = {
        "camera": SECOND_CAMERA, "engine": "BLENDER_WORKBENCH", "resolution_x": 40,
        "resolution_y": 30, "output_format": "JPEG", "color_depth": 8,
    }  # fmt: skip
    assert run_chunk(chunk(2, [2]), storage, "node-1", events.append), events[-1]
    events.clear()
    message = dataclasses.replace(chunk(3, [2]), settings={**chunk(3, [2]).settings, **settings})
    assert run_chunk(message, storage, "node-1", events.append), events[-1]
    finished = decode_event(events[-1])
    assert isinstance(finished, FinishedEvent)
    (result,) = finished.results
    assert result.output == "jobs/3/frames/frame_000002.jpg"  # the format's own extension
    with Image.open(storage / result.output) as image:
        assert image.format == "JPEG" and image.size == (40, 30)
    with Image.open(storage / "jobs/2/frames/frame_000002.png") as main_camera:
        assert main_camera.size == (WIDTH, HEIGHT)  # the scene's own settings
    new = files_under(storage) - before
    assert new and all(path.is_relative_to(storage / "jobs") for path in new)
    assert not list(Path.cwd().glob("PWNED")) and not list(storage.rglob("PWNED"))


def test_a_missing_texture_renders_with_a_warning(node_blender: Blender, storage: Path) -> None:
    scene = build_scene(node_blender, storage / "shots/missing/sh030.blend")
    (scene.parent / "textures/green.png").unlink()
    events: list[dict[str, Any]] = []
    message = dataclasses.replace(chunk(4, [1]), settings={"scene": "shots/missing/sh030.blend"})
    assert run_chunk(message, storage, "node-1", events.append), events[-1]
    frame = pixels(storage / "jobs/4/frames/frame_000001.png")
    assert green_share(frame) < 0.01  # Blender's magenta stands in for the texture
    log = (storage / "jobs/4/logs/chunk-4-attempt-1.log").read_text()
    assert "renderfarm-warning: missing texture //textures/green.png" in log
    finished = decode_event(events[-1])  # and the studio hears of it with the job
    assert isinstance(finished, FinishedEvent)
    assert finished.warnings == ["missing texture //textures/green.png (image 'green.png')"]


@pytest.mark.parametrize(
    ("scene", "settings", "reason"),
    [
        ("shots/nowhere.blend", {}, "no scene file shots/nowhere.blend in the job's files"),
        ("shots/broken.blend", {}, "Blender cannot open the scene"),
        ("shots/sq010/sh020.blend", {"camera": "Nobody"}, "no camera named 'Nobody'"),
        ("shots/sq010/sh020.blend", {"view_layer": "fg"}, "no view layer named 'fg'"),
        ("../../etc/passwd", {}, "scene must not contain '..'"),
        ("/etc/passwd.blend", {}, "scene must be relative"),
    ],
)
def test_a_chunk_blender_cannot_render_fails_saying_why(
    node_blender: Blender, storage: Path, scene: str, settings: dict[str, Any], reason: str
) -> None:
    (storage / "shots/broken.blend").write_text("this is no .blend file\n")
    before = files_under(storage)
    events: list[dict[str, Any]] = []
    message = dataclasses.replace(chunk(5, [1, 2]), settings={"scene": scene, **settings})
    assert not run_chunk(message, storage, "node-1", events.append)
    failed = decode_event(events[-1])
    assert isinstance(failed, FailedEvent) and reason in failed.error, failed.error
    assert all(path.is_relative_to(storage / "jobs/5") for path in files_under(storage) - before)
    assert blender_processes() == []


def test_scene_scripts_run_only_where_the_job_allows(
    node_blender: Blender, storage: Path, tmp_path: Path
) -> None:
    """The scene's script leaves a mark and then crashes Blender with a signal."""
    mark = tmp_path / "script-ran"
    crash = f"open({str(mark)!r}, 'w').close()\nimport os, signal\n"
    crash += "os.kill(os.getpid(), signal.SIGSEGV)\n"
    build_scene(node_blender, storage / "shots/scripted/sh040.blend", script=crash)
    base = dataclasses.replace(chunk(6, [1]), settings={"scene": "shots/scripted/sh040.blend"})
    events: list[dict[str, Any]] = []
    assert run_chunk(base, storage, "node-1", events.append), events[-1]
    assert not mark.exists()

    allowed = dataclasses.replace(
        base, chunk_id=7, settings={**base.settings, "allow_scripts": True}
    )
    assert not run_chunk(allowed, storage, "node-1", events.append)
    failed = decode_event(events[-1])
    assert mark.exists()
    assert isinstance(failed, FailedEvent) and "killed by SIGSEGV" in failed.error, failed.error
    assert blender_processes() == []


def test_a_node_without_blender_refuses_blender_chunks(tmp_path: Path) -> None:
    BLENDER.use(None)
    try:
        events: list[dict[str, Any]] = []
        assert not run_chunk(chunk(8, [1]), tmp_path, "node-1", events.append)
    finally:
        BLENDER.use(find_blender())
    failed = decode_event(events[-1])
    assert isinstance(failed, FailedEvent) and failed.error == NO_BLENDER


@pytest.mark.parametrize(
    ("renderer", "loc", "words"),
    [
        ({"scene": "../../etc/passwd"}, ["renderer", "blender", "scene"], "'..'"),
        ({"scene": "/abs/a.blend"}, ["renderer", "blender", "scene"], "not absolute"),
        ({"scene": "a\\b.blend"}, ["renderer", "blender", "scene"], "backslashes"),
        ({"scene": "a.blend\x00"}, ["renderer", "blender", "scene"], "NUL"),
        ({"scene": "notes.txt"}, ["renderer", "blender", "scene"], ".blend file"),
        (
            {"scene": "a.blend", "engine": "BLENDER_WORKBENCH", "samples": 8},
            ["renderer", "blender", "samples"],
            "no samples",
        ),
        (
            {"scene": "a.blend", "output_format": "JPEG", "color_depth": 16},
            ["renderer", "blender", "color_depth"],
            "JPEG has no depth 16",
        ),
        ({"scene": "a.blend", "cycles_device": "OPTIX"}, ["renderer", "cycles_device"], "GPU"),
        ({"scene": "a.blend", "denoise": True}, ["renderer", "blender", "denoise"], "Extra"),
    ],
)
def test_a_submission_with_contradictory_settings_names_the_field(
    renderer: dict[str, Any], loc: list[str], words: str
) -> None:
    body = {"name": "shot", "frames": "1-4", "renderer": {"kind": "blender", **renderer}}
    with pytest.raises(ValidationError) as refused:
        JobRequest.model_validate(body)
    (error,) = refused.value.errors()
    assert list(error["loc"]) == loc and words in error["msg"], error
    with_gpu = {**body, "requirements": {"gpus": 1}}
    if loc == ["renderer", "cycles_device"]:
        assert JobRequest.model_validate(with_gpu).renderer.cycles_device == "OPTIX"  # type: ignore[union-attr]


def test_a_render_node_advertises_its_blender_and_renders_a_job(
    scheduler_loop: None,
    processes: Processes,
    studio: tuple[StudioService, int],
    settings: Settings,
    engine: Engine,
    blender: Blender,
) -> None:
    service, studio_id = studio
    build_scene(blender, settings.storage_root / "shots/sq010/sh020.blend")
    (settings.storage_root / "shots/broken.blend").write_text("no blend\n")
    processes.worker("node-1", slots=1)
    nodes = wait_for(lambda: service.list_nodes(), 60, "the node to report")
    assert blender.tag in nodes[0].tags

    def submit(name: str, scene: str, **extra: Any) -> int:
        job = service.submit_job(
            studio_id,
            JobRequest.model_validate(
                {
                    "name": name, "frames": "1-4",
                    "renderer": {"kind": "blender", "scene": scene},
                    "requirements": {"tags": [blender.tag]}, **extra,
                }
            ),
        )  # fmt: skip
        assert job.id is not None
        return job.id

    good = submit("sh020", "shots/sq010/sh020.blend", chunk_size=2)
    # One chunk: its two attempts fail before the node's blocklisting (after 2) matters.
    bad = submit("broken", "shots/broken.blend", chunk_size=4, max_attempts=2, priority=10)

    def state(job_id: int) -> Any:
        detail = service.get_job(studio_id, job_id)
        return detail.job.state in ("done", "failed") and detail

    done = wait_for(lambda: state(good), 180, "the Blender job to finish")
    assert done.job.state == "done", processes.log("node-1")
    frames = sorted((settings.storage_root / f"jobs/{good}/frames").glob("*.png"))
    assert [f.name for f in frames] == [f"frame_{n:06d}.png" for n in range(1, 5)]
    assert all(green_share(pixels(f)) > 0.2 for f in frames)
    failed = wait_for(lambda: state(bad), 180, "the broken job to fail")
    assert failed.job.state == "failed"
    with Session(engine) as session:
        results = session.exec(select(FrameResultRow).where(FrameResultRow.job_id == good)).all()
        attempts = session.exec(select(AttemptRow).where(AttemptRow.job_id == bad)).all()
    assert len(results) == 4 and all(r.it_joules and r.it_joules > 0 for r in results)
    # retried once; a busy machine may also resend an attempt no node claimed in time
    # (it is then superseded, never counted)
    failed_attempts = [a for a in attempts if a.state == "failed"]
    assert len(failed_attempts) == 2
    assert all(a.state in ("failed", "superseded") for a in attempts)
    assert all("Blender cannot open the scene" in (a.error or "") for a in failed_attempts)
    assert blender_processes() == []


BLENDER_SHIM = '''
"""A stand-in for the blender executable, made of bpy: it reads the options the node
gives as Blender does, and like Blender goes on with an empty file when it cannot
read the scene it was given."""
import runpy, sys
args = sys.argv[1:]
if "--version" in args:
    print("Blender 4.5.15 LTS\\n\\tbuild date: 2025-01-01")
    sys.exit(0)
import bpy
before = args[: args.index("--")]
scene = before[before.index("--python") - 1]
try:
    bpy.ops.wm.open_mainfile(filepath=scene, use_scripts="--enable-autoexec" in before)
except RuntimeError as error:
    print(f"Error: cannot read {scene}: {error}")
try:
    runpy.run_path(before[before.index("--python") + 1], run_name="__main__")
except SystemExit:
    raise
except BaseException:
    sys.exit(int(before[before.index("--python-exit-code") + 1]))
'''


def test_a_blender_executable_renders_the_same_way(
    node_blender: Blender, storage: Path, tmp_path: Path
) -> None:
    """With an executable, the node passes the scene and the driver on Blender's command
    line (here a stand-in built on bpy, where no real blender is installed)."""
    if node_blender.executable is None:
        shim = tmp_path / "blender"
        shim.write_text(f"#!{sys.executable}\n{BLENDER_SHIM}")
        shim.chmod(0o755)
        executable = find_blender(str(shim))
        assert executable is not None and executable.version == (4, 5, 15)
    else:
        executable = node_blender
    assert executable.tag == f"blender-{executable.version[0]}.{executable.version[1]}"
    BLENDER.use(executable)
    events: list[dict[str, Any]] = []
    assert run_chunk(chunk(9, [3, 4]), storage, "node-1", events.append), events[-1]
    assert all(
        green_share(pixels(storage / f"jobs/9/frames/frame_00000{n}.png")) > 0.2 for n in (3, 4)
    )
    log = (storage / "jobs/9/logs/chunk-9-attempt-1.log").read_text()
    assert "--disable-autoexec" in log

    (storage / "shots/broken.blend").write_text("this is no .blend file\n")
    broken = dataclasses.replace(chunk(10, [1]), settings={"scene": "shots/broken.blend"})
    assert not run_chunk(broken, storage, "node-1", events.append)
    failed = decode_event(events[-1])
    assert isinstance(failed, FailedEvent) and "could not open the scene" in failed.error


def test_a_blender_that_does_not_run_stops_the_node_from_starting(tmp_path: Path) -> None:
    not_blender = tmp_path / "blender"
    not_blender.write_text("#!/bin/sh\necho 'segmentation fault' >&2\nexit 139\n")
    not_blender.chmod(0o755)
    with pytest.raises(BlenderUnavailable, match="segmentation fault"):
        find_blender(str(not_blender))
    with pytest.raises(BlenderUnavailable, match="no executable"):
        find_blender(str(tmp_path / "nowhere"))


def test_a_scene_uploaded_by_content_renders_on_a_node_without_shared_files(
    node_blender: Blender, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """The studio's folder is not the farm's, and the node shares no storage with the
    farm: the scene and its texture go up by content, the node fetches them over HTTP
    with the node token, lays the job's folder out for the attempt (so
    //textures/green.png resolves), renders into its own folder and sends each frame
    and its log back, keeping no copy; a second chunk fetches nothing; the attempt's
    folder is gone."""
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from api.app import create_app
    from tests.integration.test_assets import key_header, manifest, upload_scene
    from workers.assets import BlobCache, HttpFiles, HttpOutputs, JobFiles

    studio_folder = tmp_path / "east" / "projects" / "film"
    build_scene(node_blender, studio_folder / "shots/sq010/sh020.blend")
    scene = {
        str(path.relative_to(studio_folder)): path.read_bytes()
        for path in studio_folder.rglob("*")
        if path.is_file()
    }
    assert "shots/sq010/textures/green.png" in scene
    farm = settings.model_copy(update={"node_token": SecretStr("node-token")})
    node_storage = tmp_path / "node" / "storage"  # the node's own disk
    with TestClient(create_app(farm, engine)) as client:
        studio = key_header(engine, farm, "east")
        upload_scene(client, studio, scene)
        created = client.post("/v1/manifests", json=manifest(scene), headers=studio)
        node_files = JobFiles(
            BlobCache(tmp_path / "node" / "cache", 10**9),
            HttpFiles(client, "node-token"),
            tmp_path / "node" / "attempts",
            HttpOutputs(client, "node-token"),
        )
        for frames in ([1, 2], [3, 4]):
            events: list[dict[str, Any]] = []
            message = dataclasses.replace(
                chunk(frames[0], frames), manifest_id=created.json()["id"]
            )
            rendered = run_chunk(message, node_storage, "node-1", events.append, files=node_files)
            assert rendered, events
            finished = decode_event(events[-1])
            assert isinstance(finished, FinishedEvent)
            for report in finished.results:
                assert report.output is not None
                at_farm = farm.storage_root / report.output  # sent back
                assert not (node_storage / report.output).exists()  # and gone from the node
                assert green_share(pixels(at_farm)) > 0.2  # the texture was found
            assert (farm.storage_root / message.log_path).is_file()
            assert not (node_storage / message.log_path).exists()
        assert node_files.cache.fetched == 2  # the scene and its texture, once
        assert list((tmp_path / "node" / "attempts").iterdir()) == []
