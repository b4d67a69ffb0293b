"""Renderers in the node's bubblewrap sandbox: real chunks render inside it, and a hostile
renderer that reaches for the node's files, the farm's storage, /etc or the network
gets nothing there, where the same renderer without the sandbox gets it all.

The hostile renderer is a test's own: registered for a test in the node's table of
implementations (``workers.renderers.IMPLEMENTATIONS``), never in the farm's registry.

These tests skip where bwrap is missing or cannot make a sandbox (a container without
user namespaces); ``RENDERFARM_REQUIRE_SANDBOX=1`` makes them fail there instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from scheduler.launch.cli import app as cli
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from scheduler.wire.messages import ChunkMessage, FailedEvent, FinishedEvent, decode_event
from scheduler.wire.renderers import BuiltinRenderer
from scheduler.wire.storage import LocalStorage
from tests.conftest import Processes, wait_for
from workers import renderers
from workers.assets import FileEntry, HttpOutputs, JobFiles, StorageOutputs
from workers.cache import BlobCache
from workers.node import NodeConfig, cache_root, equip_sandbox
from workers.renderers import BLENDER
from workers.renderers.blender import Blender
from workers.runner import run_chunk
from workers.sandbox import (
    SANDBOX,
    Confinement,
    Sandbox,
    SandboxUnavailable,
    bwrap_argv,
    credential_paths,
    find_sandbox,
    private_folders,
)

pytestmark = pytest.mark.integration

NODE_TOKEN = "node-token-0123456789abcdef"
HOSTILE = textwrap.dedent(
    """
    import json, os, socket, sys

    spec = json.loads(sys.argv[1])

    def write(path):
        with open(path, "w") as out:
            out.write("pwned")

    def rewrite(path):  # a read-only file of the node's cache, through its hard link
        os.chmod(path, 0o644)
        write(path)

    def read(path):
        with open(path) as source:
            if not source.read():
                raise OSError(0, "empty")

    def listing(path):
        if not os.listdir(path):
            raise OSError(0, "empty")

    def variable(name):
        if name not in os.environ:
            raise OSError(0, "unset")

    def connect(port):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

    actions = {
        "read": read, "rewrite": rewrite, "write": write, "list": listing,
        "variable": variable, "connect": connect,
    }
    for name, action, target in spec["tries"]:
        try:
            actions[action](target)
            print(f"renderfarm-warning: {name} done", flush=True)
        except OSError as error:
            print(f"renderfarm-warning: {name} refused ({error.strerror})", flush=True)
    for frame in spec["frames"]:
        path = spec["output"].replace("{frame}", "%06d" % frame)
        planted = spec.get("planted", {}).get(str(frame))  # a link's target, or "fifo"
        if planted == "fifo":
            os.mkfifo(path)
        elif planted:
            os.symlink(planted, path)
        else:
            write(path)
        print(f"renderfarm-frame: {frame}", flush=True)
    """
)


def require_sandbox() -> None:
    try:
        find_sandbox("bwrap")
    except SandboxUnavailable as error:
        if os.environ.get("RENDERFARM_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"RENDERFARM_REQUIRE_SANDBOX=1 but {error}")
        pytest.skip(f"no sandbox here: {error}")


class Hostile:
    """A process renderer that tries what no renderer should manage; what it got is in
    its warnings ("renderfarm-warning: write-etc refused (...)")."""

    model = BuiltinRenderer
    writes_frames = True
    progress = None

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def argv(self, message: ChunkMessage, storage: Path, files: Path | None = None) -> list[str]:
        spec = {**self.spec, "frames": message.frames}
        spec["output"] = str(storage / message.output_pattern)
        return [sys.executable, "-c", HOSTILE, json.dumps(spec)]


class Contents:
    """The farm's side of a job's files, in memory: one manifest, its contents by hash."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.by_hash = {hashlib.sha256(data).hexdigest(): data for data in files.values()}

    def manifest(self, manifest_id: int) -> list[FileEntry]:
        return [
            FileEntry(path, hashlib.sha256(data).hexdigest(), len(data))
            for path, data in self.files.items()
        ]

    def fetch(self, blob_hash: str, out: Any) -> None:
        out.write(self.by_hash[blob_hash])


@dataclasses.dataclass
class Node:
    """A node's settings, its files (cache root, data folder, .env) and its sandbox."""

    settings: Settings
    config: NodeConfig
    cwd: Path

    @property
    def storage(self) -> Path:
        return self.settings.storage_root

    def files(self, contents: dict[str, bytes]) -> JobFiles:
        root = cache_root(self.settings, self.config)
        return JobFiles(BlobCache(root / "cache", 10**9), Contents(contents), root / "attempts")


@pytest.fixture
def node(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    """A node started in its own folder (a .env there holds its token), with the
    sandbox it decided on at start; renderers run unconfined again after the test."""
    require_sandbox()
    cwd = tmp_path / "node"
    cwd.mkdir()
    (cwd / ".env").write_text(f"RENDERFARM_NODE_TOKEN={NODE_TOKEN}\n")
    monkeypatch.chdir(cwd)
    config = NodeConfig(name="node-1", pool="cpu", slots=1)
    yield Node(settings.model_copy(update={"sandbox": "bwrap"}), config, cwd)
    SANDBOX.use(None)


def chunk(job_id: int, renderer: str = "builtin", **fields: Any) -> ChunkMessage:
    return ChunkMessage(
        chunk_id=job_id, attempt=1, job_id=job_id, pool="cpu", frames=[1, 2], renderer=renderer,
        settings={"width": 32, "height": 24}, timeout=120, **fields,
        output_pattern=f"jobs/{job_id}/frames/f_{{frame}}.png",
        log_path=f"jobs/{job_id}/logs/chunk-{job_id}-attempt-1.log",
    )  # fmt: skip


def rendered(events: list[dict[str, Any]]) -> FinishedEvent:
    finished = decode_event(events[-1])
    assert isinstance(finished, FinishedEvent), events[-1]
    return finished


def test_a_chunk_renders_in_the_sandbox_and_its_frames_arrive(node: Node) -> None:
    equip_sandbox(node.settings, node.config)
    assert isinstance(SANDBOX.sandbox, Sandbox)
    events: list[dict[str, Any]] = []
    assert run_chunk(chunk(1), node.storage, "node-1", events.append), events[-1]
    assert [r.output for r in rendered(events).results] == [
        "jobs/1/frames/f_000001.png",
        "jobs/1/frames/f_000002.png",
    ]
    for name in ("f_000001.png", "f_000002.png"):
        with Image.open(node.storage / "jobs/1/frames" / name) as image:
            assert image.size == (32, 24)
    log = (node.storage / "jobs/1/logs/chunk-1-attempt-1.log").read_text()
    assert "in a sandbox (" in log


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "no-sandbox"])
def test_a_hostile_renderer_reaches_nothing_of_the_nodes_in_the_sandbox(
    node: Node, monkeypatch: pytest.MonkeyPatch, sandboxed: bool
) -> None:
    """With the sandbox off, the same renderer does it all: so the test can fail."""
    if sandboxed:
        equip_sandbox(node.settings, node.config)
    contents = {"scene.txt": b"the studio's scene"}
    files = node.files(contents)
    (node.storage / "jobs/99/frames").mkdir(parents=True)
    mark = uuid.uuid4().hex
    root = cache_root(node.settings, node.config)
    cached = root / "another-studios-texture.png"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"another studio's texture")
    listener = socket.create_server(("127.0.0.1", 0))  # a farm service on this host
    job_file = str(files.work / "chunk-7-attempt-1" / "scene.txt")
    etc, tmp = f"/etc/renderfarm-{mark}", f"/tmp/renderfarm-{mark}"
    tries = [
        ("read-job-file", "read", job_file),
        ("rewrite-job-file", "rewrite", job_file),
        ("read-cache", "read", str(cached)),
        ("write-cache", "write", f"{root}/planted"),
        ("read-env", "read", str(node.cwd / ".env")),
        ("write-etc", "write", etc),
        ("write-storage", "write", f"{node.storage}/planted"),
        ("write-other-job", "write", f"{node.storage}/jobs/99/frames/planted"),
        ("write-tmp", "write", tmp),
        ("connect", "connect", listener.getsockname()[1]),
    ]
    monkeypatch.setitem(renderers.IMPLEMENTATIONS, "hostile", Hostile({"tries": tries}))
    events: list[dict[str, Any]] = []
    try:
        message = chunk(7, "hostile", manifest_id=1)
        assert run_chunk(message, node.storage, "node-1", events.append, files=files), events[-1]
        outcome = dict(w.split(" ", 1) for w in rendered(events).warnings)
        planted = {
            "etc": Path(etc).exists(),
            "tmp": Path(tmp).exists(),
            "cache": (root / "planted").exists(),
            "storage": (node.storage / "planted").exists(),
            "other job": (node.storage / "jobs/99/frames/planted").exists(),
        }
    finally:
        listener.close()
        for leftover in (etc, tmp):
            Path(leftover).unlink(missing_ok=True)
    blob = files.cache.path(hashlib.sha256(contents["scene.txt"]).hexdigest())
    frames = sorted(p.name for p in (node.storage / "jobs/7/frames").iterdir())
    assert frames == ["f_000001.png", "f_000002.png"]  # it wrote its frames, either way
    assert outcome["read-job-file"] == "done"  # and read the job's files
    assert outcome["write-tmp"] == "done"
    hostile = {k: v for k, v in outcome.items() if k not in ("read-job-file", "write-tmp")}
    if sandboxed:
        assert all(v.startswith("refused") for v in hostile.values()), outcome
        assert not any(planted.values()), planted
        assert blob.read_bytes() == contents["scene.txt"]  # the cache stays what it was
    else:
        root_may = os.access("/etc", os.W_OK)  # a root node's renderer writes there too
        assert all(v == "done" for k, v in hostile.items() if k != "write-etc" or root_may)
        assert planted == {
            "etc": root_may, "tmp": True, "cache": True, "storage": True, "other job": True,
        }  # fmt: skip
        assert blob.read_bytes() == b"pwned"  # every later job with that content gets this


REFUSED = "jobs/5/frames/f_000001.png is not a regular file the renderer wrote: refused"


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A folder a sandboxed renderer would see but for what hides it: not under /tmp
    (private there), nor under the node's data folder (tmp_path here, hidden)."""
    base = Path(tempfile.mkdtemp(prefix="renderfarm-test-", dir="/var/tmp")).resolve()
    assert not any(base.is_relative_to(private) for private in private_folders())
    yield base
    shutil.rmtree(base, ignore_errors=True)


def farm_outputs(
    route: str, tmp_path: Path, node: Node
) -> tuple[JobFiles | None, Path, list[bytes]]:
    """The node's way back for frames, and where they arrive: the shared storage (the
    renderer writes into it), the object storage (a folder standing in for it), or the
    API (a fake transport keeping the bodies PUT to it)."""
    if route == "shared":
        return None, node.storage, []
    files = node.files({})
    if route == "storage":
        farm = tmp_path / "object-storage"
        files.outputs = StorageOutputs(LocalStorage(farm))
        return files, farm, []
    received: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        received.append(request.read())
        return httpx.Response(204)

    client = httpx.Client(base_url="http://farm", transport=httpx.MockTransport(answer))
    files.outputs = HttpOutputs(client, NODE_TOKEN)
    return files, tmp_path / "no-folder", received


@pytest.mark.timeout(60)  # without the check, the node would wait on the FIFO forever
@pytest.mark.parametrize("route", ["shared", "storage", "http"])
@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_a_frame_that_is_not_a_file_the_renderer_wrote_is_refused(
    node: Node, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, planted: str, route: str
) -> None:
    """A renderer's frame 1 is a link to a node's secret, or a FIFO: the attempt fails
    saying so, and nothing of the secret reaches the farm, whichever way frames go."""
    equip_sandbox(node.settings, node.config)
    mark = uuid.uuid4().hex
    secret = tmp_path / "node-secrets" / "credentials"
    secret.parent.mkdir()
    secret.write_text(f"aws_secret_access_key = {mark}\n")
    files, farm, received = farm_outputs(route, tmp_path, node)
    spec = {"tries": [], "planted": {"1": "fifo" if planted == "fifo" else str(secret)}}
    monkeypatch.setitem(renderers.IMPLEMENTATIONS, "hostile", Hostile(spec))
    events: list[dict[str, Any]] = []
    assert not run_chunk(chunk(5, "hostile"), node.storage, "node-1", events.append, files=files)
    failed = decode_event(events[-1])
    assert isinstance(failed, FailedEvent) and REFUSED in failed.error, events[-1]
    assert mark not in json.dumps(events)
    assert not any(mark.encode() in body for body in received)
    for path in farm.rglob("*"):  # as the farm would serve them: through links
        assert not (path.is_file() and mark.encode() in path.read_bytes()), path
    assert not os.path.lexists(node.storage / "jobs/5/frames/f_000001.png")  # removed,
    assert secret.read_text() == f"aws_secret_access_key = {mark}\n"  # not what it named


@pytest.mark.parametrize("home", ["hidden whole", "holds the runtime"])
def test_the_node_users_credentials_are_out_of_a_renderers_sight(
    node: Node, monkeypatch: pytest.MonkeyPatch, outside_tmp: Path, home: str
) -> None:
    """The node user's home folder is hidden, or where renderers run from inside it (a
    pyenv Python under /root), its credentials are; so are the files the node's
    environment names, and its secret variables are not in the renderer's."""
    fake_home = outside_tmp / "home"
    secrets = {
        "read-home-file": fake_home / "notes.txt",
        "read-aws": fake_home / ".aws/credentials",
        "read-ssh": fake_home / ".ssh/id_ed25519",
        "read-netrc": fake_home / ".netrc",
        "read-named-file": outside_tmp / "elsewhere/credentials",
    }
    for path in secrets.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a node's secret\n")
    blender = fake_home / "blender-4.5/blender"
    blender.parent.mkdir()
    blender.write_text("#!/bin/sh\n")
    monkeypatch.setenv("HOME", str(fake_home))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(secrets["read-named-file"]))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("STUDIO_SYNC_TOKEN", "0123456789abcdef")
    if home == "holds the runtime":  # a Blender in it: the home folder stays
        monkeypatch.setattr(BLENDER, "_blender", Blender(str(blender), (4, 5, 0)))
    else:
        monkeypatch.setattr(BLENDER, "_blender", None)
    equip_sandbox(node.settings, node.config)
    tries = [(name, "read", str(path)) for name, path in secrets.items()]
    tries += [
        ("read-runtime", "read", str(blender)),
        ("variable-aws", "variable", "AWS_SECRET_ACCESS_KEY"),
        ("variable-token", "variable", "STUDIO_SYNC_TOKEN"),
        ("variable-path", "variable", "PATH"),
    ]
    monkeypatch.setitem(renderers.IMPLEMENTATIONS, "hostile", Hostile({"tries": tries}))
    events: list[dict[str, Any]] = []
    assert run_chunk(chunk(6, "hostile"), node.storage, "node-1", events.append), events[-1]
    outcome = dict(w.split(" ", 1) for w in rendered(events).warnings)
    reached = {name for name, result in outcome.items() if result == "done"}
    if home == "holds the runtime":  # it stays, with what is not a credential
        assert reached == {"variable-path", "read-runtime", "read-home-file"}, outcome
    else:
        assert reached == {"variable-path"}, outcome  # what renderers need stays
    assert len(outcome) == len(tries)


def test_a_job_without_its_own_files_sees_its_scene_and_not_the_storages_folders(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a shared storage, a job without a manifest reads its scene where the studio
    put it; every studio's contents, the manifests, uploads and other jobs' frames and
    logs are not there. Its own frames folder, inside ``jobs/``, is still written."""
    equip_sandbox(node.settings, node.config)
    planted = {
        "scenes/sh010.blend": "the studio's scene",
        "jobs/99/frames/f_000001.png": "another job's frame",
        "jobs/99/logs/chunk-99-attempt-1.log": "another job's log",
        "blobs/ab/cd/abcd": "another studio's texture",
        "manifests/1.json": "{}",
        "incoming/put-1": "an upload",
    }
    for key, text in planted.items():
        (node.storage / key).parent.mkdir(parents=True, exist_ok=True)
        (node.storage / key).write_text(text)
    tries = [
        ("read-scene", "read", str(node.storage / "scenes/sh010.blend")),
        ("list-other-frames", "list", str(node.storage / "jobs/99/frames")),
        ("read-other-log", "read", str(node.storage / "jobs/99/logs/chunk-99-attempt-1.log")),
        ("list-blobs", "list", str(node.storage / "blobs")),
        ("list-manifests", "list", str(node.storage / "manifests")),
        ("list-incoming", "list", str(node.storage / "incoming")),
    ]
    monkeypatch.setitem(renderers.IMPLEMENTATIONS, "hostile", Hostile({"tries": tries}))
    events: list[dict[str, Any]] = []
    assert run_chunk(chunk(8, "hostile"), node.storage, "node-1", events.append), events[-1]
    outcome = dict(w.split(" ", 1) for w in rendered(events).warnings)
    assert outcome.pop("read-scene") == "done"
    assert all(v.startswith("refused") for v in outcome.values()), outcome
    frames = sorted(p.name for p in (node.storage / "jobs/8/frames").iterdir())
    assert frames == ["f_000001.png", "f_000002.png"]
    assert "in a sandbox (" in (node.storage / "jobs/8/logs/chunk-8-attempt-1.log").read_text()


def test_a_blender_chunk_renders_in_the_sandbox_from_the_jobs_files(
    node: Node, tmp_path: Path
) -> None:
    """A .blend and its texture laid out for the attempt, read-only, render as at home."""
    from tests.integration.test_blender import WIDTH, build_scene, green_share, require_blender
    from workers.renderers import BLENDER

    blender = require_blender()
    BLENDER.use(blender)
    scene = build_scene(blender, tmp_path / "studio" / "sh020.blend")
    contents = {
        "sh020.blend": scene.read_bytes(),
        "textures/green.png": (scene.parent / "textures/green.png").read_bytes(),
    }
    equip_sandbox(node.settings, node.config)
    message = dataclasses.replace(
        chunk(3, "blender", manifest_id=1), settings={"scene": "sh020.blend"}, frames=[1, 4]
    )
    events: list[dict[str, Any]] = []
    assert run_chunk(message, node.storage, "node-1", events.append, files=node.files(contents)), (
        events[-1]
    )
    outputs = [r.output for r in rendered(events).results]
    assert outputs == ["jobs/3/frames/f_000001.png", "jobs/3/frames/f_000004.png"]
    for output in outputs:
        assert output is not None
        with Image.open(node.storage / output) as image:
            assert image.size[0] == WIDTH
            assert green_share(np.asarray(image.convert("RGB"), dtype=np.int16)) > 0.2


def test_the_sandbox_is_data_mounted_parents_first(tmp_path: Path) -> None:
    """A hidden folder, a folder bound back inside it, the folder hidden made read-only
    after its mount points exist; what does not exist is left out; no shell anywhere."""
    cache, attempt, frames = tmp_path / "cache", tmp_path / "cache/attempt", tmp_path / "frames"
    for folder in (attempt, frames):
        folder.mkdir(parents=True)
    confinement = Confinement(
        hidden=(cache, tmp_path / "nowhere"), readable=(attempt,), writable=(frames,), cwd=frames
    )
    argv = bwrap_argv("bwrap", confinement, ["blender", "-b", "a b; rm -rf /"])
    mounts = " ".join(argv[argv.index("ALL") + 1 :])
    assert mounts == (
        f"--tmpfs /tmp --tmpfs {cache} --bind {frames} {frames} --ro-bind {attempt} {attempt} "
        f"--remount-ro {cache} --chdir {frames} -- blender -b a b; rm -rf /"
    )
    assert argv[-1] == "a b; rm -rf /"  # one argument, as given


def test_a_job_without_files_reads_the_storage_less_its_folders_but_writes_its_frames(
    tmp_path: Path,
) -> None:
    """The storage read-only, its own folders hidden over it, the job's frames folder
    (inside the hidden ``jobs/``) bound writable after, ``jobs/`` read-only last."""
    storage = tmp_path / "storage"
    frames = storage / "jobs/4/frames"
    for name in ("blobs", "manifests", "incoming", "scenes"):
        (storage / name).mkdir(parents=True)
    frames.mkdir(parents=True)
    sandbox = Sandbox("bwrap", runtime=(), devices=(), private=())
    argv = bwrap_argv("bwrap", sandbox.confinement(storage, frames, None), ["true"])
    mounts = " ".join(argv[argv.index("ALL") + 1 :])
    hidden = " ".join(f"--tmpfs {storage / name}" for name in ("blobs", "incoming", "jobs"))
    assert mounts == (
        f"--ro-bind {storage} {storage} {hidden} --tmpfs {storage / 'manifests'} "
        f"--bind {frames} {frames} --remount-ro {storage / 'blobs'} "
        f"--remount-ro {storage / 'manifests'} --remount-ro {storage / 'incoming'} "
        f"--remount-ro {storage / 'jobs'} --chdir {storage} -- true"
    )


def test_what_renderers_run_from_stays_visible_under_a_private_folder(tmp_path: Path) -> None:
    """A checkout and its virtual environment under /tmp (as CI's may be): the private
    /tmp covers them, so they are bound back read-only, or no renderer could start."""
    private, venv = tmp_path / "tmp", tmp_path / "tmp/checkout/.venv"
    storage, elsewhere = tmp_path / "storage", tmp_path / "opt/python"
    for folder in (venv, storage / "jobs/4/frames", elsewhere):
        folder.mkdir(parents=True)
    sandbox = Sandbox("bwrap", runtime=(venv, elsewhere), devices=(), private=(private,))
    argv = bwrap_argv("bwrap", sandbox.confinement(storage, storage / "jobs/4/frames", None), [])
    mounts = " ".join(argv[argv.index("ALL") + 1 :])
    assert f"--tmpfs {private}" in mounts and f"--ro-bind {venv} {venv}" in mounts
    assert mounts.index(f"--tmpfs {private}") < mounts.index(f"--ro-bind {venv} {venv}")
    assert str(elsewhere) not in mounts  # not covered: the root's read-only bind shows it


def test_the_home_folder_is_hidden_whole_or_its_credentials_one_by_one(tmp_path: Path) -> None:
    home, python = tmp_path / "home", tmp_path / "home/.pyenv/versions/3.11/bin/python"
    environ = {"AWS_CONFIG_FILE": "/etc/aws/config", "AWS_PROFILE": "render", "HOME": "x"}
    assert credential_paths(home, [tmp_path / "venv"], environ) == [
        home.resolve(),
        Path("/etc/aws/config"),
    ]
    one_by_one = credential_paths(home, [python], environ)
    assert home.resolve() not in one_by_one
    assert {home / ".aws", home / ".ssh", home / ".netrc", Path("/etc/aws/config")} <= set(
        one_by_one
    )


def test_auto_renders_unconfined_where_bwrap_is_missing_saying_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    with caplog.at_level("WARNING", logger="workers.sandbox"):
        assert find_sandbox("auto") is None
    assert [r.getMessage() for r in caplog.records] == [
        "sandbox: none, renderers run unconfined: no bwrap on this node's PATH "
        "(Debian and Ubuntu: apt install bubblewrap)"
    ]
    with pytest.raises(SandboxUnavailable, match="no bwrap"):
        find_sandbox("bwrap")
    assert find_sandbox("off") is None


def test_a_node_that_requires_the_sandbox_refuses_to_start_without_it(
    settings: Settings, tmp_path: Path
) -> None:
    env = {
        "PATH": str(tmp_path),  # no bwrap on it
        "RENDERFARM_BROKER_URL": settings.effective_broker_url,
        "RENDERFARM_DATA_DIR": str(tmp_path),
        "RENDERFARM_ENERGY_METER": "off",
    }
    result = CliRunner().invoke(cli, ["worker", "--name", "n1", "--sandbox", "bwrap"], env=env)
    assert result.exit_code == 2 and "sandbox: no bwrap" in result.output, result.output


def test_a_real_node_renders_a_job_in_its_sandbox(
    scheduler_loop: None,
    processes: Processes,
    studio: tuple[StudioService, int],
    settings: Settings,
) -> None:
    require_sandbox()
    service, studio_id = studio
    processes.start("node-1", "worker", "--name", "node-1", "--sandbox", "bwrap")
    wait_for(lambda: service.list_nodes(), 60, "the node to report")
    request = {"name": "sb", "frames": "1-2", "renderer": {"kind": "builtin", "width": 32}}
    job = service.submit_job(studio_id, JobRequest.model_validate(request))
    assert job.id is not None
    done = wait_for(
        lambda: (d := service.get_job(studio_id, job.id)).job.state in ("done", "failed") and d,  # type: ignore[arg-type]
        120,
        "the job to finish",
    )
    assert done.job.state == "done", processes.log("node-1")
    assert done.progress.frames_done == 2
    logs = list((settings.storage_root / f"jobs/{job.id}/logs").glob("*.log"))
    assert logs and all("in a sandbox (" in log.read_text() for log in logs)
    assert "sandbox: renderers run in a sandbox" in processes.log("node-1")
