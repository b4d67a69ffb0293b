"""A render node's files: a local cache of contents by SHA-256, and the job's folder laid
out for each attempt, so that a scene's relative paths (``//textures/wood.png``) resolve.

Contents come from the farm without a shared filesystem (``HttpFiles``: the API's
``/v1/internal`` routes, with the node token) or from the farm's storage itself
(``StorageFiles``: a mounted folder, or the object storage). Every content is checked
against its hash before it enters the cache. Frames and logs go back the same way
(``HttpOutputs``, ``StorageOutputs``) as each is written, and leave the node's disk;
with a mounted folder the renderer writes them into it.

The cache (workers/cache.py) keeps at most ``max_bytes``, the least recently used out
first; an attempt's folder holds hard links to cached files (copies across file
systems), so evicting a content never breaks a render that uses it. A cached file's
mtime is its last use (the links carry no mtime of the studio's). A node that
rendered frame 1 of a scene fetches nothing for frame 2.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import httpx

from scheduler.core.assets import ManifestError, blob_key, relative_path
from scheduler.wire.storage import LocalStorage, Storage, StorageError
from workers.cache import BlobCache, FetchError, Sink  # also imported from here by callers

CHUNK = 1 << 20
BATCH_FILE_BYTES = 1 << 20  # contents up to this size are fetched many per request,
BATCH_BYTES = 64 << 20  # up to this much,
BATCH_FILES = 2_000  # and this many at a time


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    hash: str
    size: int
    mtime: float = 0.0


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

    @contextmanager
    def fetch_many(self, hashes: list[str]) -> Iterator[Iterator[tuple[str, IO[bytes]]]]:
        """Many contents in one request: a tar streamed as the farm writes it, read
        member by member (``hash``, its bytes) without holding it. Contents the farm
        does not have are left out (a single ``fetch`` says why)."""
        body = {"hashes": hashes}
        with self.client.stream(
            "POST", "/v1/internal/blobs", json=body, headers=self.headers
        ) as response:
            if response.status_code != 200:
                raise FetchError(f"{len(hashes)} contents: HTTP {response.status_code}")
            stream = _ResponseFile(response.iter_bytes(CHUNK))
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    yield _members(tar)
            except tarfile.TarError as error:
                raise FetchError(f"{len(hashes)} contents: {error}") from None


def _members(tar: tarfile.TarFile) -> Iterator[tuple[str, IO[bytes]]]:
    for member in tar:
        data = tar.extractfile(member) if member.isfile() else None
        if data is not None:
            yield member.name, data


class _ResponseFile(io.RawIOBase):
    """A response body as a file that ``tarfile`` reads in stream mode."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            self._left = next(self._pieces, b"")
            if not self._left:
                return 0
        size = min(len(buffer), len(self._left))
        buffer[:size] = self._left[:size]
        self._left = self._left[size:]
        return size


class _Member:
    """One member of a batch, as the cache's source for that content."""

    def __init__(self, data: IO[bytes]) -> None:
        self.data = data

    def fetch(self, blob_hash: str, out: Sink) -> None:
        shutil.copyfileobj(self.data, out, CHUNK)


class StorageFiles:
    """From the farm's storage itself: a folder the node mounts (the shared-storage
    mode), or the object storage, with credentials of the node's own."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def manifest(self, manifest_id: int) -> list[FileEntry]:
        try:
            body = b"".join(self.storage.read(f"manifests/{manifest_id}.json"))
            entries = json.loads(body)["entries"]
        except (OSError, StorageError, ValueError, KeyError) as error:
            raise FetchError(f"manifest {manifest_id}: {error}") from None
        return [FileEntry(**entry) for entry in entries]

    def fetch(self, blob_hash: str, out: Sink) -> None:
        try:
            for piece in self.storage.read(blob_key(blob_hash)):
                out.write(piece)
        except (OSError, StorageError) as error:
            raise FetchError(f"content {blob_hash}: {error}") from None


def lay_out(manifest_id: int, dest: Path, cache: BlobCache, source: FarmFiles) -> list[FileEntry]:
    """The manifest's files under ``dest`` (a fresh folder for one attempt)."""
    entries = source.manifest(manifest_id)
    if isinstance(source, HttpFiles):
        prefetch(entries, cache, source)
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


def prefetch(entries: list[FileEntry], cache: BlobCache, source: HttpFiles) -> None:
    """The small contents the cache lacks, many per request (a scene of 10,000 small
    files is not 10,000 round trips); each is checked and cached as a single fetch is.
    Larger contents, and any a batch lacked, are fetched one by one afterwards."""
    wanted: dict[str, FileEntry] = {}
    for entry in entries:
        if entry.size <= BATCH_FILE_BYTES and not cache.path(entry.hash).is_file():
            wanted.setdefault(entry.hash, entry)
    for batch in _batches(list(wanted.values())):
        with source.fetch_many([entry.hash for entry in batch]) as members:
            for blob_hash, data in members:
                if blob_hash in wanted:
                    cache.get(wanted[blob_hash], _Member(data))
        cache.release()


def _batches(entries: list[FileEntry]) -> Iterator[list[FileEntry]]:
    batch: list[FileEntry] = []
    size = 0
    for entry in entries:
        if batch and (len(batch) >= BATCH_FILES or size + entry.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.size
    if batch:
        yield batch


class Outputs(Protocol):
    """Where a node without the shared storage sends its frames and logs, each as soon
    as it is written. ``send`` moves ``local/relative`` to ``relative`` in the farm's
    storage: the node keeps no copy (its disk holds only what is on its way)."""

    def send(self, relative: str, local: Path) -> None: ...


def open_written(local: Path, relative: str) -> IO[bytes]:
    """``local/relative`` opened for reading, if it is a regular file at that very name.

    The renderer (studios' code) chose what is there: a link to a node's secret
    (``/root/.aws/credentials``, its ``.env``) would send the secret back as a frame,
    a FIFO would block the node's reader forever. So the name is opened without
    following a link (``O_NOFOLLOW``) nor waiting for a writer (``O_NONBLOCK``), and
    what was opened is checked (``fstat``): anything but a regular file is removed
    (the link, not its target) and refused with ``FetchError``. Only the name is the
    renderer's: the folders above it are the node's (the frames folder is where the
    sandbox binds it). ``FileNotFoundError`` where nothing is there.
    """
    path = local / relative
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENXIO):  # a link; ENXIO: a socket
            raise
    else:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return os.fdopen(fd, "rb")
        os.close(fd)  # a FIFO, a folder, a device
    with suppress(OSError):  # (a folder stays)
        path.unlink(missing_ok=True)
    raise FetchError(f"{relative} is not a regular file the renderer wrote: refused")


class HttpOutputs:
    """Through the farm's API, with the node token."""

    def __init__(self, client: httpx.Client, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def send(self, relative: str, local: Path) -> None:
        with open_written(local, relative) as body:  # what was checked is what is sent
            response = self.client.put(
                f"/v1/internal/outputs/{relative}", content=body, headers=self.headers
            )
        if response.status_code != 204:
            raise FetchError(f"{relative}: the farm answered HTTP {response.status_code}")
        (local / relative).unlink(missing_ok=True)


class StorageOutputs:
    """Straight into the object storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def send(self, relative: str, local: Path) -> None:
        """The checked file's bytes go to a spool file of the node's, out of the
        renderer's reach, and that is uploaded: ``adopt`` takes a path, and the renderer
        could put a link at the frame's name between a check and the upload."""
        try:
            with open_written(local, relative) as body:
                spooled = self._spooled(body)
        except FileNotFoundError:
            raise FetchError(f"{relative}: no such file on the node") from None
        try:
            self.storage.adopt(relative, spooled)
        except StorageError as error:  # the frame stays on the node, to be sent again
            raise FetchError(f"{relative}: {error}") from None
        finally:
            spooled.unlink(missing_ok=True)
        (local / relative).unlink(missing_ok=True)  # the farm has it: gone from here

    def _spooled(self, body: IO[bytes]) -> Path:
        spool, path = self.storage.spool_file("frame")
        try:
            with spool:
                shutil.copyfileobj(body, spool, CHUNK)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path


class JobFiles:
    """The job's folder for each attempt on this node: ``prepare`` lays the manifest out
    under ``work`` (nothing for a job without one), ``release`` removes it after; and,
    on a node without the shared storage, where frames and logs go back (``outputs``)."""

    def __init__(
        self, cache: BlobCache, source: FarmFiles, work: Path, outputs: Outputs | None = None
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
    storage: Storage, cache_root: Path, cache_bytes: int, api_url: str | None, token: str | None
) -> JobFiles:
    """This node's files: from the API with the node token when it has both (and its
    frames back there); else from the farm's storage, a mounted folder (frames are
    written into it) or the object storage (frames are uploaded to it)."""
    cache = BlobCache(cache_root / "cache", cache_bytes)
    work = cache_root / "attempts"
    if api_url and token:
        client = httpx.Client(base_url=api_url, timeout=60.0)
        return JobFiles(cache, HttpFiles(client, token), work, HttpOutputs(client, token))
    if isinstance(storage, LocalStorage):
        return JobFiles(cache, StorageFiles(storage), work)
    return JobFiles(cache, StorageFiles(storage), work, StorageOutputs(storage))
