"""The farm's storage, a folder or S3-compatible object storage (moto's standalone
server here), behaves the same to everyone who uses it; and a farm whose storage is
object storage renders with nodes that share no filesystem with it: they read the
scene from the bucket, write their frames to it, and keep nothing."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.engine import Engine

from api.app import create_app
from scheduler.core.assets import blob_key
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.wire.storage import (
    KeyMissing,
    LocalStorage,
    S3Storage,
    Storage,
    StorageError,
    open_storage,
    parse_s3_url,
)
from tests.conftest import Processes, both_storages, wait_for
from tests.integration.test_assets import SCENE, manifest, sha, upload_scene
from workers.assets import FetchError, StorageOutputs

pytestmark = pytest.mark.integration


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return open_storage(settings)


def spool(storage: Storage, data: bytes) -> Path:
    file, path = storage.spool_file("test")
    with file:
        file.write(data)
    return path


@both_storages
def test_a_file_is_adopted_whole_and_read_back(storage: Storage) -> None:
    data = os.urandom(3 * 2**20 + 17)  # several of a reader's pieces
    path = spool(storage, data)
    storage.adopt("jobs/7/frames/frame_000001.exr", path)
    assert not path.exists()  # moved, not copied
    stat = storage.stat("jobs/7/frames/frame_000001.exr")
    assert stat is not None and stat.size == len(data)
    assert abs(stat.mtime - time.time()) < 120
    pieces = list(storage.read("jobs/7/frames/frame_000001.exr"))
    assert len(pieces) > 1 and b"".join(pieces) == data
    storage.put_bytes("manifests/3.json", b'{"id": 3}')
    assert b"".join(storage.read("manifests/3.json")) == b'{"id": 3}'
    storage.delete("jobs/7/frames/frame_000001.exr")
    storage.delete("jobs/7/frames/frame_000001.exr")  # nothing there: not an error
    assert storage.stat("jobs/7/frames/frame_000001.exr") is None
    with pytest.raises(KeyMissing):
        storage.read("jobs/7/frames/frame_000001.exr")


@both_storages
@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "jobs/../../x", "a//b", "nul\x00"])
def test_no_key_reaches_outside_the_storage(storage: Storage, key: str) -> None:
    with pytest.raises(StorageError, match="not a storage key"):
        storage.stat(key)
    with pytest.raises(StorageError):
        storage.adopt(key, spool(storage, b"x"))


@both_storages
def test_what_a_crashed_upload_left_in_the_spool_is_swept(storage: Storage) -> None:
    old = spool(storage, b"half an upload")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = spool(storage, b"an upload under way")
    assert storage.sweep_spool(older_than=3600) == 1
    assert not old.exists() and fresh.exists()


def test_a_link_or_a_fifo_in_a_storage_folder_is_not_a_stored_file(tmp_path: Path) -> None:
    """What a renderer could leave in its frames folder to have the farm serve a
    secret, or hang on a read: nothing is stored there, as far as anyone reading asks."""
    storage = LocalStorage(tmp_path / "storage")
    secret = tmp_path / "node.env"
    secret.write_text("RENDERFARM_NODE_TOKEN=a-secret-the-studio-must-not-see")
    frames = storage.root / "jobs/1/frames"
    frames.mkdir(parents=True)
    (frames / "frame_000001.png").symlink_to(secret)
    os.mkfifo(frames / "frame_000002.png")
    (storage.root / "jobs/2").symlink_to(tmp_path)  # a linked folder, leading outside
    for key in ("jobs/1/frames/frame_000001.png", "jobs/1/frames/frame_000002.png"):
        assert storage.stat(key) is None
        with pytest.raises(KeyMissing):
            storage.open(key)
    with pytest.raises(StorageError, match="outside"):
        storage.open("jobs/2/node.env")


def test_a_large_file_goes_to_object_storage_in_parts(s3_bucket: str, tmp_path: Path) -> None:
    bucket, prefix = parse_s3_url(s3_bucket)
    storage = S3Storage(bucket, prefix, tmp_path / "spool", multipart_bytes=5 * 2**20)
    data = os.urandom(11 * 2**20)  # three parts of 5 MiB
    storage.adopt("blobs/big", spool(storage, data))
    head = boto3.client("s3").head_object(Bucket=bucket, Key=f"{prefix}/blobs/big")
    assert "-" in head["ETag"]  # a multipart upload's ETag is "<md5 of md5s>-<parts>"
    assert b"".join(storage.read("blobs/big")) == data


def test_an_unreachable_object_storage_is_a_storage_error(tmp_path: Path) -> None:
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",  # the discard port: nothing answers
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    storage = S3Storage("farm", "", tmp_path / "spool", client=client)
    with pytest.raises(StorageError, match="farm"):
        storage.stat("blobs/x")
    path = spool(storage, b"a frame")
    with pytest.raises(StorageError):
        storage.adopt("jobs/1/frames/frame_000001.png", path)
    assert path.read_bytes() == b"a frame"  # still there, to be sent again
    node = tmp_path / "node"
    frame = node / "jobs/1/frames/frame_000001.png"
    frame.parent.mkdir(parents=True)
    frame.write_bytes(b"a frame")
    with pytest.raises(FetchError, match=r"frame_000001\.png"):
        StorageOutputs(storage).send("jobs/1/frames/frame_000001.png", node)
    assert frame.read_bytes() == b"a frame"  # the node keeps what it could not send
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [path.name]  # no copy left


@pytest.mark.parametrize("storage_location", ["s3"], indirect=True)
def test_nodes_without_a_shared_filesystem_render_from_and_into_object_storage(
    scheduler_loop: None,
    processes: Processes,
    engine: Engine,
    settings: Settings,
    storage: Storage,
) -> None:
    """The studio uploads through the API (into the bucket); a ``renderfarm worker``
    with the bucket but no API URL and no shared folder lays the scene out from the
    bucket, renders, and puts each frame and its log there; the studio downloads them
    through the API. The node's disk keeps the cached scene and no frame."""
    assert settings.storage_url is not None
    service = StudioService(engine, settings)
    _studio, key = service.create_studio("east")
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings, engine)) as client:
        upload_scene(client, auth, SCENE)
        created = client.post("/v1/manifests", json=manifest(SCENE), headers=auth).json()
        assert storage.stat(f"manifests/{created['id']}.json") is not None
        processes.worker("west-1", slots=2)
        wait_for(lambda: service.list_nodes(), 60, "the node to report")
        job = {
            "name": "sh020",
            "frames": "1-4",
            "chunk_size": 2,
            "manifest": created["id"],
            "renderer": {"kind": "builtin", "width": 40, "height": 24},
        }
        submitted = client.post("/v1/jobs", json=job, headers=auth)
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]

        def finished() -> str | None:
            state = str(client.get(f"/v1/jobs/{job_id}", headers=auth).json()["state"])
            return state if state in ("done", "failed") else None

        assert wait_for(finished, 120, "the job to finish") == "done", processes.log("west-1")
        archive = client.get(f"/v1/jobs/{job_id}/output?format=zip", headers=auth)
        assert archive.status_code == 200, archive.text
        with zipfile.ZipFile(io.BytesIO(archive.content)) as frames:
            assert frames.namelist() == [f"frame_{n:06d}.png" for n in range(1, 5)]
            assert Image.open(io.BytesIO(frames.read("frame_000003.png"))).size == (40, 24)
        log = client.get(f"/v1/jobs/{job_id}/frames/3/log", headers=auth)
        assert log.status_code == 200 and log.text
    for n in range(1, 5):
        assert storage.stat(f"jobs/{job_id}/frames/frame_{n:06d}.png") is not None
    node_disk = settings.storage_root / "jobs"  # the node's local scratch
    assert not node_disk.exists() or not [p for p in node_disk.rglob("*") if p.is_file()]
    cache = settings.data_dir / "node-cache" / "west-1" / "cache"
    for data in SCENE.values():  # the scene came from the bucket, checked, into the cache
        assert (cache / blob_key(sha(data))).read_bytes() == data
