"""A render node lays out a job's files from the farm, with or without a shared
filesystem: over HTTP with the node token, or from the mounted storage; every content
checked; a cache that fetches nothing twice and keeps to its size."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from api.app import create_app
from scheduler.settings import Settings
from scheduler.wire.storage import LocalStorage
from tests.integration.test_assets import SCENE, blob_tar, key_header, manifest, upload_scene
from workers.assets import BlobCache, FetchError, FileEntry, HttpFiles, StorageFiles, lay_out

pytestmark = pytest.mark.integration
TOKEN = "node-secret-for-tests"


@pytest.fixture
def farm(engine: Engine, settings: Settings) -> Iterator[tuple[TestClient, int]]:
    """The API with a node token, a studio's scene uploaded and its manifest's id."""
    with_token = settings.model_copy(update={"node_token": SecretStr(TOKEN)})
    with TestClient(create_app(with_token, engine)) as client:
        studio = key_header(engine, with_token, "east")
        upload_scene(client, studio, SCENE)
        created = client.post("/v1/manifests", json=manifest(SCENE), headers=studio)
        yield client, created.json()["id"]


def test_a_node_without_shared_storage_lays_out_the_scene_and_fetches_it_once(
    farm: tuple[TestClient, int], tmp_path: Path
) -> None:
    client, manifest_id = farm
    cache = BlobCache(tmp_path / "cache", max_bytes=10**9)
    files = HttpFiles(client, TOKEN)
    first = tmp_path / "attempt-1"
    lay_out(manifest_id, first, cache, files)
    for path, data in SCENE.items():
        assert (first / path).read_bytes() == data  # relative paths resolve in the tree
    assert cache.fetched == 2  # two contents: the textures share one
    lay_out(manifest_id, tmp_path / "attempt-2", cache, files)  # the next chunk
    assert cache.fetched == 2 and cache.hits >= 3


def test_the_internal_routes_want_the_node_token(farm: tuple[TestClient, int]) -> None:
    client, manifest_id = farm
    blob = hashlib.sha256(SCENE["shots/sq010/sh020.blend"]).hexdigest()
    for url in (f"/v1/internal/manifests/{manifest_id}", f"/v1/internal/blobs/{blob}"):
        assert client.get(url).status_code == 401
        wrong = client.get(url, headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401
    with pytest.raises(FetchError, match="401"):
        HttpFiles(client, "guess").manifest(manifest_id)


def test_a_node_of_a_farm_with_shared_storage_reads_it(
    farm: tuple[TestClient, int], settings: Settings, tmp_path: Path
) -> None:
    _client, manifest_id = farm
    cache = BlobCache(tmp_path / "cache", max_bytes=10**9)
    source = StorageFiles(LocalStorage(settings.storage_root))
    lay_out(manifest_id, tmp_path / "tree", cache, source)
    assert (tmp_path / "tree" / "shots/sq010/sh020.blend").read_bytes() == SCENE[
        "shots/sq010/sh020.blend"
    ]


class Tampered:
    """A farm whose contents are not what their names say (a broken disk, a proxy)."""

    def manifest(self, manifest_id: int) -> list[FileEntry]:
        return [FileEntry("scene.blend", hashlib.sha256(b"real").hexdigest(), 4)]

    def fetch(self, blob_hash: str, out: object) -> None:
        out.write(b"fake")  # type: ignore[attr-defined]


class Traversing(Tampered):
    def manifest(self, manifest_id: int) -> list[FileEntry]:
        return [FileEntry("../../outside", hashlib.sha256(b"fake").hexdigest(), 4)]


def test_a_content_that_is_not_what_it_claims_never_enters_the_cache(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**9)
    with pytest.raises(FetchError, match="whose hash is not"):
        lay_out(1, tmp_path / "tree", cache, Tampered())
    assert not list((tmp_path / "cache").rglob("*.blend"))
    assert list((tmp_path / "cache" / "incoming").iterdir()) == []
    with pytest.raises(FetchError, match="parts are not allowed"):
        lay_out(1, tmp_path / "tree", cache, Traversing())
    assert not (tmp_path / "outside").exists()


class Counting:
    """Contents made up on the fly: 1 KiB each, counted."""

    def __init__(self) -> None:
        self.sent = 0

    def manifest(self, manifest_id: int) -> list[FileEntry]:
        return []

    def fetch(self, blob_hash: str, out: object) -> None:
        self.sent += 1
        out.write(CONTENTS[blob_hash])  # type: ignore[attr-defined]


CONTENTS = {hashlib.sha256(bytes([n]) * 1024).hexdigest(): bytes([n]) * 1024 for n in range(8)}


def test_the_cache_keeps_to_its_size_least_recently_used_out_first(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=4 * 1024)
    source = Counting()
    entries = [FileEntry(f"f{n}", h, 1024) for n, h in enumerate(CONTENTS)]
    for entry in entries[:4]:
        cache.get(entry, source)
    cache.get(entries[0], source)  # used again: the most recent now
    cache.get(entries[4], source)  # one too many: the least recently used (1) goes
    kept = {p.name for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()}
    assert entries[1].hash not in kept
    assert {entries[0].hash, entries[4].hash} <= kept and len(kept) == 4
    sent = source.sent
    cache.get(entries[0], source)
    assert source.sent == sent  # a hit


def test_nodes_send_outputs_only_into_a_jobs_frames_and_logs(
    farm: tuple[TestClient, int], settings: Settings
) -> None:
    client, _manifest_id = farm
    token = {"Authorization": f"Bearer {TOKEN}"}
    sent = client.put("/v1/internal/outputs/jobs/7/frames/frame_000001.png", content=b"png",
                      headers=token)  # fmt: skip
    assert sent.status_code == 204
    assert (settings.storage_root / "jobs/7/frames/frame_000001.png").read_bytes() == b"png"
    for path in ("jobs/7/../../../etc/x", "blobs/ab/cd/x", "jobs/7/frames/.hidden",
                 "jobs/7/frames/a/b.png", "jobs/x/frames/f.png"):  # fmt: skip
        response = client.put(f"/v1/internal/outputs/{path}", content=b"x", headers=token)
        assert response.status_code in (404, 422), path
    assert not (settings.storage_root.parent / "etc").exists()
    unsigned = client.put("/v1/internal/outputs/jobs/7/frames/f.png", content=b"x")
    assert unsigned.status_code == 401


def test_an_empty_or_short_node_token_is_refused_at_start() -> None:
    from pydantic import ValidationError

    for token in ("", "short"):
        with pytest.raises(ValidationError, match="node_token"):
            Settings(_env_file=None, node_token=token)  # type: ignore[call-arg]


def test_a_scene_of_many_small_files_comes_in_a_few_requests(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """3,000 small files: the node asks for them many at a time (two requests of
    2,000 and 1,000), checks each, and fetches none one by one."""
    scene = {f"cache/fluid_{n:05d}.bobj": f"particles {n}".encode() for n in range(3000)}
    with_token = settings.model_copy(update={"node_token": SecretStr(TOKEN)})
    with TestClient(create_app(with_token, engine)) as client:
        studio = key_header(engine, with_token, "east")
        tar_headers = {**studio, "Content-Type": "application/x-tar"}
        sent = client.post("/v1/blobs", content=blob_tar(scene.values()), headers=tar_headers)
        assert len(sent.json()["stored"]) == 3000
        created = client.post("/v1/manifests", json=manifest(scene), headers=studio)
        manifest_id = created.json()["id"]
        asked: list[str] = []
        client.event_hooks["request"].append(lambda r: asked.append(f"{r.method} {r.url.path}"))
        cache = BlobCache(tmp_path / "cache", max_bytes=10**9)
        lay_out(manifest_id, tmp_path / "tree", cache, HttpFiles(client, TOKEN))
        for path, data in scene.items():
            assert (tmp_path / "tree" / path).read_bytes() == data
        assert cache.fetched == 3000
        assert asked.count("POST /v1/internal/blobs") == 2
        assert not [a for a in asked if a.startswith("GET /v1/internal/blobs/")]
        wanted = {"hashes": ["../../etc/passwd"]}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/v1/internal/blobs", json=wanted).status_code == 401
        assert client.post("/v1/internal/blobs", json=wanted, headers=headers).status_code == 422
        many = {"hashes": ["a" * 64] * 5001}
        assert client.post("/v1/internal/blobs", json=many, headers=headers).status_code == 422
