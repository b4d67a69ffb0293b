"""A render node's files: a local cache of contents by SHA-256, and the job's folder laid
out for each attempt, so that a scene's relative paths (``//textures/wood.png``) resolve.

Contents come from the farm without a shared filesystem (``HttpFiles``: the API's
``/v1/internal`` routes, with the node token) or, where the farm has one, from the
shared storage (``SharedFiles``). Every content is checked against its hash before it
enters the cache. The cache keeps at most ``max_bytes``, the least recently used out
first; an attempt's folder holds hard links to cached files (copies across file
systems), so evicting a content never breaks a render that uses it. A cached file's
mtime is its last use (the links carry no mtime of the studio's). A node that
rendered frame 1 of a scene fetches nothing for frame 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import httpx

from scheduler.core.assets import ManifestError, blob_key, relative_path

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    hash: str
    size: int
    mtime: float = 0.0


class FetchError(Exception):
    """A content or manifest could not be had, or was not what it claimed to be."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class FarmFiles(Protocol):
    """Where a node gets manifests and contents."""

    def manifest(self, manifest_id: int) -> list[FileEntry]: ...

    def fetch(self, blob_hash: str, out: Sink) -> None: ...


class HttpFiles:
    """From the farm's API, with the node token: no shared filesystem needed."""

    def __init__(self, client: httpx.Client, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def manifest(self, manifest_id: int) -> list[FileEntry]:
        response = self.client.get(f"/v1/internal/manifests/{manifest_id}", headers=self.headers)
        if response.status_code != 200:
            raise FetchError(f"manifest {manifest_id}: HTTP {response.status_code} {response.text}")
        return [FileEntry(**entry) for entry in response.json()["entries"]]

    def fetch(self, blob_hash: str, out: Sink) -> None:
        url = f"/v1/internal/blobs/{blob_hash}"
        with self.client.stream("GET", url, headers=self.headers) as response:
            if response.status_code != 200:
                raise FetchError(f"content {blob_hash}: HTTP {response.status_code}")
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)


class SharedFiles:
    """From the farm's storage, mounted on the node (the shared-storage mode)."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage

    def manifest(self, manifest_id: int) -> list[FileEntry]:
        path = self.storage / "manifests" / f"{manifest_id}.json"
        try:
            entries = json.loads(path.read_text())["entries"]
        except (OSError, ValueError, KeyError) as error:
            raise FetchError(f"manifest {manifest_id}: {error}") from None
        return [FileEntry(**entry) for entry in entries]

    def fetch(self, blob_hash: str, out: Sink) -> None:
        try:
            with open(self.storage / blob_key(blob_hash), "rb") as source:
                shutil.copyfileobj(source, out, CHUNK)
        except OSError as error:
            raise FetchError(f"content {blob_hash}: {error}") from None


class BlobCache:
    """Contents by hash on the node's disk, at most ``max_bytes`` of them."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.incoming = root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.fetched = 0  # contents fetched from the farm since the node started
        self.hits = 0
        self._last_use = 0

    def path(self, blob_hash: str) -> Path:
        return self.root / blob_key(blob_hash)

    def get(self, entry: FileEntry, source: FarmFiles) -> Path:
        """The content's file in the cache, fetched and checked first if need be."""
        target = self.path(entry.hash)
        if target.is_file():
            self._touch(target)  # most recently used
            self.hits += 1
            return target
        fd, name = tempfile.mkstemp(dir=self.incoming)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                source.fetch(entry.hash, _Hashing(out, digest))
        except BaseException:
            os.unlink(name)
            raise
        if digest.hexdigest() != entry.hash:
            os.unlink(name)
            raise FetchError(
                f"{entry.path}: the farm sent a content whose hash is not {entry.hash}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(name, 0o444)  # read-only: an attempt's hard link cannot rewrite it
        os.replace(name, target)
        self._touch(target)
        self.fetched += 1
        self._evict(keep=target)
        return target

    def _touch(self, path: Path) -> None:
        """Its mtime is its last use, to the nanosecond (file systems' own clock for
        "now" is coarser, and ties would make the eviction order arbitrary)."""
        now = max(time.time_ns(), self._last_use + 1)
        self._last_use = now
        os.utime(path, ns=(now, now))

    def _evict(self, keep: Path) -> None:
        with self._lock:
            files = [(p.stat(), p) for p in self._files() if p != keep]
            total = sum(s.st_size for s, _ in files) + keep.stat().st_size
            for stat, path in sorted(files, key=lambda f: f[0].st_mtime):
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= stat.st_size

    def _files(self) -> Iterator[Path]:
        blobs = self.root / "blobs"
        return (p for p in blobs.glob("*/*/*") if p.is_file()) if blobs.is_dir() else iter(())


def lay_out(manifest_id: int, dest: Path, cache: BlobCache, source: FarmFiles) -> list[FileEntry]:
    """The manifest's files under ``dest`` (a fresh folder for one attempt)."""
    entries = source.manifest(manifest_id)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        try:
            path = dest / relative_path(entry.path)  # never outside dest, whatever was sent
        except ManifestError as error:
            raise FetchError(f"manifest {manifest_id}: {error}") from None
        cached = cache.get(entry, source)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(cached, path)
        except OSError:  # another file system: a copy
            shutil.copyfile(cached, path)
        # (no mtime set on the link: it would be the cached file's, its LRU clock)
    return entries


class _Hashing:
    """A file that hashes what is written to it."""

    def __init__(self, out: BinaryIO, digest: Any) -> None:
        self.out = out
        self.digest = digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.out.write(data)


class HttpOutputs:
    """Frames and logs back to the farm's API as each is written (no shared storage)."""

    def __init__(self, client: httpx.Client, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def send(self, relative: str, storage: Path) -> None:
        """Send ``storage/relative`` to the farm, to the same relative path there."""
        with open(storage / relative, "rb") as body:
            response = self.client.put(
                f"/v1/internal/outputs/{relative}", content=body, headers=self.headers
            )
        if response.status_code != 204:
            raise FetchError(f"{relative}: the farm answered HTTP {response.status_code}")


class JobFiles:
    """The job's folder for each attempt on this node: ``prepare`` lays the manifest out
    under ``work`` (nothing for a job without one), ``release`` removes it after; and,
    on a node without the shared storage, where frames and logs go back (``outputs``)."""

    def __init__(
        self, cache: BlobCache, source: FarmFiles, work: Path, outputs: HttpOutputs | None = None
    ) -> None:
        self.cache = cache
        self.source = source
        self.work = work
        self.outputs = outputs

    def folder(self, manifest_id: int, task_id: str) -> Path:
        return self.work / task_id

    def prepare(self, manifest_id: int | None, task_id: str) -> Path | None:
        if manifest_id is None:
            return None
        dest = self.folder(manifest_id, task_id)
        shutil.rmtree(dest, ignore_errors=True)  # what a crashed earlier run left
        lay_out(manifest_id, dest, self.cache, self.source)
        return dest

    def release(self, manifest_id: int | None, task_id: str) -> None:
        if manifest_id is not None:
            shutil.rmtree(self.folder(manifest_id, task_id), ignore_errors=True)


def job_files(
    storage: Path, cache_root: Path, cache_bytes: int, api_url: str | None, token: str | None
) -> JobFiles:
    """This node's files: from the API with the node token when it has both (and its
    frames back there), else from the shared storage."""
    cache = BlobCache(cache_root / "cache", cache_bytes)
    if api_url and token:
        client = httpx.Client(base_url=api_url, timeout=60.0)
        return JobFiles(
            cache, HttpFiles(client, token), cache_root / "attempts", HttpOutputs(client, token)
        )
    return JobFiles(cache, SharedFiles(storage), cache_root / "attempts")
