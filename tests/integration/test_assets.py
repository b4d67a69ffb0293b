"""Scenes travel by content: the studio learns what the farm lacks, sends only that,
checked against its hash, and names it in a manifest; nothing about other studios'
contents leaks. Real database, the real API in process; the tests where the storage
matters run twice, on a folder and on S3-compatible object storage (moto's server)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from api.app import create_app
from scheduler.core.assets import ManifestEntry, blob_key
from scheduler.db import BlobRow, StudioBlob
from scheduler.errors import Conflict, TooLarge
from scheduler.settings import Settings
from scheduler.usecases.assets import AssetService
from scheduler.usecases.blobstore import BlobStore
from scheduler.usecases.jobs import StudioService
from scheduler.wire.storage import LocalStorage, Storage, StorageError, open_storage
from tests.conftest import both_storages
from tests.integration.conftest import Clock

pytestmark = pytest.mark.integration


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return open_storage(settings)


def stored(storage: Storage, key: str) -> bytes | None:
    if storage.stat(key) is None:
        return None
    return b"".join(storage.read(key))


def spooled(settings: Settings) -> list[str]:
    """Files left in the local spool (uploads on their way in)."""
    spool = settings.storage_root / "incoming"
    return [p.name for p in spool.iterdir()] if spool.is_dir() else []


def key_header(engine: Engine, settings: Settings, name: str) -> dict[str, str]:
    _studio, key = StudioService(engine, settings).create_studio(name)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def east(engine: Engine, settings: Settings) -> dict[str, str]:
    return key_header(engine, settings, "east")


@pytest.fixture
def west(engine: Engine, settings: Settings) -> dict[str, str]:
    return key_header(engine, settings, "west")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_tar(contents: Iterable[bytes], *extra: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A batch for POST /v1/blobs: each content named by its SHA-256, then ``extra``
    members as given."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for data in contents:
            info = tarfile.TarInfo(sha(data))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data))
    return archive.getvalue()


def manifest(files: dict[str, bytes]) -> dict[str, Any]:
    return {
        "files": [
            {"path": path, "size": len(data), "hash": sha(data), "mtime": 1.0e9}
            for path, data in files.items()
        ]
    }


SCENE = {
    "shots/sq010/sh020.blend": b"BLENDER-v405" + bytes(range(256)) * 40,
    "shots/sq010/textures/wood.png": b"\x89PNG wood" * 100,
    "shots/sq010/textures/copy-of-wood.png": b"\x89PNG wood" * 100,  # same content
}


def upload_scene(client: TestClient, headers: dict[str, str], files: dict[str, bytes]) -> int:
    """What the CLI does; returns the bytes it sent."""
    wanted = client.post("/v1/assets/missing", json=manifest(files), headers=headers)
    assert wanted.status_code == 200, wanted.text
    by_hash = {sha(data): data for data in files.values()}
    sent = 0
    for blob_hash in wanted.json()["missing"]:
        put = client.put(f"/v1/blobs/{blob_hash}", content=by_hash[blob_hash], headers=headers)
        assert put.status_code == 201, put.text
        sent += len(by_hash[blob_hash])
    created = client.post("/v1/manifests", json=manifest(files), headers=headers)
    assert created.status_code == 201, created.text
    return sent


@both_storages
def test_a_scene_is_sent_once_and_a_second_submission_sends_nothing(
    client: TestClient, east: dict[str, str], storage: Storage, settings: Settings
) -> None:
    first = upload_scene(client, east, SCENE)
    assert first == len(SCENE["shots/sq010/sh020.blend"]) + len(
        SCENE["shots/sq010/textures/wood.png"]
    )  # the two textures share one content
    assert upload_scene(client, east, SCENE) == 0
    again = client.put(f"/v1/blobs/{sha(SCENE['shots/sq010/sh020.blend'])}", content=b"x",
                       headers=east)  # fmt: skip
    assert again.status_code == 200  # the studio's own content: a no-op
    for data in SCENE.values():
        assert stored(storage, blob_key(sha(data))) == data
    assert spooled(settings) == []


@both_storages
def test_a_content_that_does_not_match_its_hash_is_refused_and_nothing_is_kept(
    client: TestClient, east: dict[str, str], settings: Settings, engine: Engine, storage: Storage
) -> None:
    claimed = sha(b"the real texture")
    response = client.put(f"/v1/blobs/{claimed}", content=b"something else", headers=east)
    assert response.status_code == 422
    assert "SHA-256" in response.text
    assert stored(storage, blob_key(claimed)) is None
    assert spooled(settings) == []
    with Session(engine) as session:
        assert session.exec(select(BlobRow)).all() == []
    bad_name = client.put("/v1/blobs/../../etc/passwd", content=b"x", headers=east)
    assert bad_name.status_code in (404, 422)


@both_storages
def test_many_small_files_go_in_one_request(
    client: TestClient, east: dict[str, str], engine: Engine
) -> None:
    files = {f"cache/particles/{n:05d}.bphys": f"frame {n}".encode() for n in range(2000)}
    evil = tarfile.TarInfo("../../escape")
    evil.size = 1
    response = client.post(
        "/v1/blobs",
        content=blob_tar(files.values(), (evil, b"!")),
        headers={**east, "Content-Type": "application/x-tar"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["stored"]) == 2000
    assert [r["name"] for r in body["refused"]] == ["../../escape"]
    wanted = client.post("/v1/assets/missing", json=manifest(files), headers=east)
    assert wanted.json() == {"missing": [], "bytes": 0}
    assert client.post("/v1/manifests", json=manifest(files), headers=east).status_code == 201


def test_no_studio_learns_what_another_stored(
    client: TestClient,
    east: dict[str, str],
    west: dict[str, str],
    settings: Settings,
    engine: Engine,
) -> None:
    upload_scene(client, east, SCENE)
    blend = sha(SCENE["shots/sq010/sh020.blend"])
    # west is told to send what east sent, exactly as if the farm had never seen it
    wanted = client.post("/v1/assets/missing", json=manifest(SCENE), headers=west).json()
    assert blend in wanted["missing"]
    # and cannot name it without sending the bytes
    named = client.post("/v1/manifests", json=manifest(SCENE), headers=west)
    assert named.status_code == 409 and blend in named.text
    assert upload_scene(client, west, SCENE) > 0
    # the farm keeps one copy, each studio is charged for its own
    with Session(engine) as session:
        assert len(session.exec(select(BlobRow)).all()) == 2
        assert len(session.exec(select(StudioBlob)).all()) == 4
    # a studio reads only its own manifests
    east_manifest = client.post("/v1/manifests", json=manifest(SCENE), headers=east).json()
    assert client.get(f"/v1/manifests/{east_manifest['id']}", headers=west).status_code == 404
    own = client.get(f"/v1/manifests/{east_manifest['id']}", headers=east).json()
    assert [e["path"] for e in own["entries"]] == sorted(SCENE)


@pytest.mark.parametrize(
    "path",
    ["../outside.blend", "/etc/passwd", "shots\\sq010.blend", "a/./b", "a//b", "nul\x00.blend",
     "C:/scene.blend", ""],
)  # fmt: skip
def test_a_manifest_names_only_paths_inside_the_jobs_folder(
    client: TestClient, east: dict[str, str], path: str
) -> None:
    body = {"files": [{"path": path, "size": 1, "hash": sha(b"x")}]}
    response = client.post("/v1/assets/missing", json=body, headers=east)
    assert response.status_code == 422, response.text
    assert "files" in response.text or "path" in response.text


def test_a_file_and_a_folder_of_the_same_name_are_refused(
    client: TestClient, east: dict[str, str]
) -> None:
    files = {"scene": b"a", "scene/texture.png": b"b"}
    response = client.post("/v1/assets/missing", json=manifest(files), headers=east)
    assert response.status_code == 422 and "both a file and a folder" in response.text


@both_storages
def test_a_studio_stores_no_more_than_its_quota(
    engine: Engine, settings: Settings, east: dict[str, str], storage: Storage
) -> None:
    small = settings.model_copy(update={"studio_quota_bytes": 5000})
    with TestClient(create_app(small, engine)) as client:
        fits = b"a" * 4000
        assert client.put(f"/v1/blobs/{sha(fits)}", content=fits, headers=east).status_code == 201
        over = b"b" * 2000
        response = client.put(f"/v1/blobs/{sha(over)}", content=over, headers=east)
        assert (
            response.status_code == 413
            and "1000 bytes this studio may still store" in response.text
        )
        assert stored(storage, blob_key(sha(over))) is None
        big_stream = b"c" * 2_000_000  # past the API's 1 MiB body limit: contents stream
        roomy = small.model_copy(update={"studio_quota_bytes": 10_000_000})
    with TestClient(create_app(roomy, engine)) as client:
        response = client.put(f"/v1/blobs/{sha(big_stream)}", content=big_stream, headers=east)
        assert response.status_code == 201, response.text


def test_uploads_at_the_same_moment_never_exceed_the_quota(
    engine: Engine, settings: Settings
) -> None:
    """Eight uploads that each fit, three of which fill the quota, charged at once: the
    studio's row is locked while its quota is checked, so exactly three are kept."""
    small = settings.model_copy(update={"studio_quota_bytes": 10_000})
    studio, _key = StudioService(engine, small).create_studio("east")
    assert studio.id is not None
    assets = AssetService(engine, small, BlobStore(open_storage(small)))
    contents = [bytes([n]) * 3000 for n in range(8)]
    together = threading.Barrier(len(contents))

    def upload(data: bytes) -> bool:
        writer = assets.begin_upload(studio.id, sha(data))  # type: ignore[arg-type]
        writer.write(data)
        together.wait()
        try:
            assets.finish_upload(studio.id, sha(data), writer)  # type: ignore[arg-type]
            return True
        except TooLarge:
            return False

    with ThreadPoolExecutor(len(contents)) as pool:
        kept = list(pool.map(upload, contents))
    assert sum(kept) == 3
    with Session(engine) as session:
        assert sum(row.size for row in session.exec(select(StudioBlob)).all()) == 9000
    assert assets.room_left(studio.id) == 1000


def test_a_batch_keeps_what_fits_the_quota_and_says_why_it_refused_the_rest(
    engine: Engine, settings: Settings, east: dict[str, str]
) -> None:
    contents = [bytes([n]) * 3000 for n in range(4)]
    archive = blob_tar([*contents, contents[0]])  # the first twice: charged once
    small = settings.model_copy(update={"studio_quota_bytes": 10_000})
    with TestClient(create_app(small, engine)) as client:
        response = client.post(
            "/v1/blobs",
            content=archive,
            headers={**east, "Content-Type": "application/x-tar"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert [b["hash"] for b in body["stored"]] == [sha(c) for c in [*contents[:3], contents[0]]]
        assert [r["name"] for r in body["refused"]] == [sha(contents[3])]
        assert "quota of 10000 bytes" in body["refused"][0]["reason"]
        wanted = client.post("/v1/assets/missing", json=manifest({"a": contents[3]}), headers=east)
        assert wanted.json()["missing"] == [sha(contents[3])]
    assert spooled(settings) == []


class FailingOnce(LocalStorage):
    """A storage whose first ``adopt`` fails, as object storage does when it is down."""

    failed = False

    def adopt(self, key: str, path: Path) -> None:
        if not self.failed:
            self.failed = True
            raise StorageError("the storage is down")
        super().adopt(key, path)


def test_a_content_charged_but_not_stored_is_asked_for_again_and_charged_once(
    engine: Engine, settings: Settings
) -> None:
    studio, _key = StudioService(engine, settings).create_studio("east")
    assert studio.id is not None
    store = BlobStore(FailingOnce(settings.storage_root))
    assets = AssetService(engine, settings, store)
    data = b"a texture the storage failed to take"
    entry = ManifestEntry("textures/wood.png", len(data), sha(data))
    quota = settings.studio_quota_bytes

    def upload() -> int:
        writer = assets.begin_upload(studio.id, sha(data))  # type: ignore[arg-type]
        writer.write(data)
        return assets.finish_upload(studio.id, sha(data), writer)  # type: ignore[arg-type]

    with pytest.raises(StorageError):
        upload()
    assert not store.has(sha(data))
    assert assets.missing(studio.id, [entry]).hashes == [sha(data)]  # asked for again
    with pytest.raises(Conflict):
        assets.create_manifest(studio.id, [entry])  # and not nameable
    assert assets.room_left(studio.id) == quota - len(data)  # its room is held
    assert upload() == len(data)
    assert store.has(sha(data))
    assert assets.missing(studio.id, [entry]).hashes == []
    assert assets.room_left(studio.id) == quota - len(data)  # charged once
    assets.create_manifest(studio.id, [entry])
    assert spooled(settings) == []


def test_a_claim_whose_content_never_arrived_is_collected(
    engine: Engine, settings: Settings
) -> None:
    studio, _key = StudioService(engine, settings).create_studio("east")
    assert studio.id is not None
    store = BlobStore(FailingOnce(settings.storage_root))
    data = b"lost on its way"
    writer = AssetService(engine, settings, store).begin_upload(studio.id, sha(data))
    writer.write(data)
    with pytest.raises(StorageError):
        AssetService(engine, settings, store, Clock(now=time.time())).finish_upload(
            studio.id, sha(data), writer
        )
    later = AssetService(engine, settings, store, Clock(now=time.time() + 7 * 3600))
    assert later.collect_garbage().studio_contents == 1
    assert later.room_left(studio.id) == settings.studio_quota_bytes


@both_storages
def test_contents_nothing_names_are_collected_after_the_retention(
    engine: Engine, settings: Settings, east: dict[str, str], client: TestClient
) -> None:
    named = {"scene.blend": b"kept: a manifest names it"}
    upload_scene(client, east, named)
    stray = b"sent, never named"
    assert client.put(f"/v1/blobs/{sha(stray)}", content=stray, headers=east).status_code == 201
    clock = Clock(now=10**10)  # long after both were sent
    store = BlobStore(open_storage(settings))
    assets = AssetService(engine, settings, store, clock)
    collected = assets.collect_garbage()
    assert (collected.studio_contents, collected.blobs, collected.bytes) == (1, 1, len(stray))
    assert not store.has(sha(stray))
    assert store.has(sha(named["scene.blend"]))
    recent = AssetService(engine, settings, store, Clock(now=0.0)).collect_garbage()
    assert recent.blobs == 0


def test_a_job_names_its_studios_manifest_and_no_other(
    client: TestClient, east: dict[str, str], west: dict[str, str]
) -> None:
    upload_scene(client, east, SCENE)
    created = client.post("/v1/manifests", json=manifest(SCENE), headers=east).json()
    job = {"name": "sh020", "frames": "1-2", "renderer": {"kind": "noop"}}
    own = client.post("/v1/jobs", json={**job, "manifest": created["id"]}, headers=east)
    assert own.status_code == 201, own.text
    assert own.json()["manifest"] == created["id"]
    theirs = client.post("/v1/jobs", json={**job, "manifest": created["id"]}, headers=west)
    assert theirs.status_code == 422 and "manifest" in theirs.text


@both_storages
def test_an_operator_collects_from_the_command_line(
    client: TestClient, east: dict[str, str], settings: Settings, storage: Storage
) -> None:
    stray = b"sent, never named, past a retention of 0 s"
    assert client.put(f"/v1/blobs/{sha(stray)}", content=stray, headers=east).status_code == 201
    env = {
        **os.environ,
        "RENDERFARM_DATABASE_URL": settings.effective_database_url,
        "RENDERFARM_STORAGE": settings.storage_url or str(settings.storage_root),
        "RENDERFARM_BLOB_RETENTION_SECONDS": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "scheduler.launch.cli", "assets", "collect"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"1 content(s), {len(stray)} bytes, deleted" in done.stdout
    assert stored(storage, blob_key(sha(stray))) is None


def test_a_batch_refuses_links_and_more_than_it_may_unpack(
    engine: Engine, settings: Settings, east: dict[str, str]
) -> None:
    link = tarfile.TarInfo(sha(b"x"))
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar_headers = {**east, "Content-Type": "application/x-tar"}
    with TestClient(create_app(settings, engine)) as client:
        response = client.post("/v1/blobs", content=blob_tar([], (link, b"")), headers=tar_headers)
        assert response.json()["stored"] == [] and len(response.json()["refused"]) == 1
    big = blob_tar(bytes([n]) * 4000 for n in range(3))
    small = settings.model_copy(update={"max_batch_bytes": 10_000})
    with TestClient(create_app(small, engine)) as client:
        response = client.post("/v1/blobs", content=big, headers=tar_headers)
        assert response.status_code == 413 and "10000 bytes" in response.text


@pytest.mark.parametrize(
    ("body", "route"),
    [
        ('{"files":[{"path":"a\\udfffb","size":1,"hash":"%s"}]}' % ("a" * 64), "/v1/manifests"),
        ('{"files":[{"path":"a","size":1,"hash":"%s","mtime":NaN}]}' % ("a" * 64),
         "/v1/assets/missing"),
        ('{"files":[{"path":"a","size":1,"hash":"%s","mtime":1e400}]}' % ("a" * 64),
         "/v1/manifests"),
        (r'{"name":"x","frames":"1","renderer":{"kind":"\udfff"}}', "/v1/jobs"),
    ],
)  # fmt: skip
def test_input_json_cannot_encode_back_is_a_422(
    client: TestClient, east: dict[str, str], body: str, route: str
) -> None:
    response = client.post(
        route, content=body, headers={**east, "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "url",
    ["/v1/jobs/99999999999999/frames/1/thumbnail", "/v1/jobs/1/frames/99999999999/output",
     "/v1/jobs/99999999999999/output", "/v1/manifests/99999999999999", "/v1/jobs/0"],
)  # fmt: skip
def test_ids_past_the_databases_range_are_a_422(
    client: TestClient, east: dict[str, str], url: str
) -> None:
    assert client.get(url, headers=east).status_code == 422
