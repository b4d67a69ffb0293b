"""The farm's storage: contents by hash, manifests, frames, logs and thumbnails, by key.

A key is a relative POSIX path (``blobs/ab/cd/<sha256>``, ``manifests/7.json``,
``jobs/7/frames/frame_000001.png``). Two backends behind one protocol:

- ``LocalStorage``: a folder (the default; embedded farms, and farms whose nodes mount
  it).
- ``S3Storage``: S3-compatible object storage, ``RENDERFARM_STORAGE=s3://bucket/prefix``,
  through boto3 with its usual configuration (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` or
  ``AWS_ENDPOINT_URL`` for a server other than AWS's). Nodes without a shared mount
  read contents from it and write frames to it directly, or go through the API.

Everything enters the storage from a local file (``adopt``): a content is spooled to
disk as it arrives and checked before it is adopted, and adopting is atomic in both
backends (a rename; one PUT or a completed multipart upload), so no reader ever sees
half a file. The spool (``spool_file``) is a local folder: on the same file system as
the storage's folder for ``LocalStorage``, so adopting is a rename.

A folder's keys are read without following symbolic links and only as regular files
(a renderer that wrote its frame as a link to a secret, or a FIFO, gets nothing
served); a storage that fails (object storage down, refusing) raises
``StorageError``, which the API answers with 503 (``scheduler.errors.Unavailable``).

Nodes import this module (``scheduler.wire`` loads no database); boto3 is imported only
when an S3 storage is opened (``pip install 'renderfarm[s3]'``).
"""

from __future__ import annotations

import os
import stat as stat_module
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

from scheduler.core.assets import ManifestError, relative_path
from scheduler.errors import Unavailable
from scheduler.settings import Settings

PIECE_BYTES = 1 << 20  # what a reader yields at a time
MULTIPART_BYTES = 64 << 20  # larger files go to object storage in parts
SPOOL_DIR = "incoming"


class StorageError(Unavailable):
    """The storage could not do what was asked (unreachable, refused, a bad key)."""


class KeyMissing(StorageError):
    """Nothing is stored under this key (or nothing a reader may have: not a file)."""


@dataclass(frozen=True, slots=True)
class Stat:
    size: int
    mtime: float  # seconds since the epoch: the file's mtime, the object's LastModified


@dataclass(frozen=True, slots=True)
class Opened:
    """A stored file opened for reading: its size and mtime as of the opening, and its
    bytes, a piece at a time (one request to object storage for all three)."""

    size: int
    mtime: float
    pieces: Iterator[bytes]


class Storage(Protocol):
    url: str  # where it is, for messages (a folder, or s3://bucket/prefix)

    def stat(self, key: str) -> Stat | None: ...

    def open(self, key: str) -> Opened:
        """Open what is stored under ``key``; ``KeyMissing`` if nothing is."""
        ...

    def read(self, key: str) -> Iterator[bytes]:
        """The stored bytes, a piece at a time; ``KeyMissing`` before the first piece."""
        ...

    def spool_file(self, prefix: str) -> tuple[IO[bytes], Path]:
        """A new local file to write into, to ``adopt`` (or unlink) afterwards."""
        ...

    def adopt(self, key: str, path: Path) -> None:
        """Move the local file ``path`` into the storage under ``key``, atomically: it is
        gone from ``path`` once this returns; where this raises, it is still there (the
        caller decides: a frame stays to be sent again, a spooled upload is removed)."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def delete(self, key: str) -> None:
        """Remove what is stored under ``key``; nothing stored is not an error."""
        ...

    def sweep_spool(self, older_than: float) -> int:
        """Remove spooled files untouched for ``older_than`` seconds (what a crash left
        mid-upload); the number removed."""
        ...


def check_key(key: str) -> str:
    """The key normalised, or ``StorageError``: relative, no ``..``, no control characters."""
    try:
        return relative_path(key)
    except ManifestError as error:
        raise StorageError(f"not a storage key: {error}") from None


def open_storage(settings: Settings) -> Storage:
    """The storage ``RENDERFARM_STORAGE`` names: an ``s3://`` URL or a folder."""
    if settings.storage_url is not None:
        return S3Storage.from_url(settings.storage_url, spool=settings.storage_root / SPOOL_DIR)
    return LocalStorage(settings.storage_root)


class _Spool:
    """Local spool files, and their sweep."""

    spool: Path

    def spool_file(self, prefix: str) -> tuple[IO[bytes], Path]:
        self.spool.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.spool, prefix=f"{prefix}-")
        return os.fdopen(fd, "wb"), Path(name)

    def sweep_spool(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        try:
            entries = list(os.scandir(self.spool))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:  # adopted or removed meanwhile
                continue
        return removed


class LocalStorage(_Spool):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = str(self.root)
        self.spool = self.root / SPOOL_DIR

    def path(self, key: str) -> Path:
        """Where ``key`` lives; ``StorageError`` where a linked folder leads outside."""
        path = self.root / check_key(key)
        if not path.parent.resolve().is_relative_to(self.root):
            raise StorageError(f"{key} leads outside the storage")
        return path

    def stat(self, key: str) -> Stat | None:
        try:
            found = os.lstat(self.path(key))  # a link is not a stored file
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Stat(found.st_size, found.st_mtime) if stat_module.S_ISREG(found.st_mode) else None

    def open(self, key: str) -> Opened:
        try:  # no link followed, no FIFO waited on: a regular file or nothing
            fd = os.open(self.path(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise KeyMissing(f"{key} is not in storage") from None
        except OSError as error:  # ELOOP: a link
            raise KeyMissing(f"{key} is not a stored file: {error.strerror}") from None
        found = os.fstat(fd)
        if not stat_module.S_ISREG(found.st_mode):
            os.close(fd)
            raise KeyMissing(f"{key} is not a stored file")
        return Opened(found.st_size, found.st_mtime, _pieces(os.fdopen(fd, "rb")))

    def read(self, key: str) -> Iterator[bytes]:
        return self.open(key).pieces

    def adopt(self, key: str, path: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)

    def put_bytes(self, key: str, data: bytes) -> None:
        file, path = self.spool_file("put")
        try:
            with file:
                file.write(data)
            self.adopt(key, path)
        finally:
            path.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


class S3Storage(_Spool):
    """Objects under ``prefix/`` in ``bucket``; a key's object is ``prefix/key``."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        spool: Path,
        client: Any = None,
        multipart_bytes: int = MULTIPART_BYTES,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.spool = spool
        if client is None:
            client = _s3_client()
        self.client = client
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
        self.multipart_bytes = multipart_bytes
        self._transfer = TransferConfig(
            multipart_threshold=multipart_bytes, multipart_chunksize=max(5 << 20, multipart_bytes)
        )

    @classmethod
    def from_url(cls, url: str, spool: Path) -> S3Storage:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, spool)

    def object_key(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def stat(self, key: str) -> Stat | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except self._errors as error:
            if _status(error) == 404:
                return None
            raise StorageError(f"{self.url}/{key}: {error}") from None
        return Stat(int(head["ContentLength"]), head["LastModified"].timestamp())

    def open(self, key: str) -> Opened:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except self._errors as error:
            if _status(error) == 404:
                raise KeyMissing(f"{key} is not in storage") from None
            raise StorageError(f"{self.url}/{key}: {error}") from None
        body = answer["Body"]
        return Opened(
            int(answer["ContentLength"]),
            answer["LastModified"].timestamp(),
            _closing(body.iter_chunks(PIECE_BYTES), body),
        )

    def read(self, key: str) -> Iterator[bytes]:
        return self.open(key).pieces

    def adopt(self, key: str, path: Path) -> None:
        """An upload from the file: one PUT up to ``multipart_bytes``, else multipart in
        parts boto3 retries; the object appears whole when it completes."""
        try:
            if path.stat().st_size < self.multipart_bytes:  # no transfer threads for a frame
                with open(path, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=body)
            else:
                self.client.upload_file(
                    str(path), self.bucket, self.object_key(key), Config=self._transfer
                )
        except Exception as error:  # botocore's, and boto3's S3UploadFailedError
            raise StorageError(f"{self.url}/{key}: {error}") from None
        path.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)
        except self._errors as error:
            raise StorageError(f"{self.url}/{key}: {error}") from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except self._errors as error:
            raise StorageError(f"{self.url}/{key}: {error}") from None


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix) (the settings checked its shape)."""
    parts = urlsplit(url)
    return parts.netloc, parts.path.strip("/")


def _s3_client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StorageError(
            "RENDERFARM_STORAGE is an s3:// URL but boto3 is not installed: "
            "pip install 'renderfarm[s3]'"
        ) from None
    # Standard retries (throttling, 5xx, connection resets) with backoff, as AWS advises.
    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    return boto3.session.Session().client("s3", config=config)


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status is None and response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
        return 404
    return int(status) if status is not None else None


def _pieces(file: IO[bytes]) -> Iterator[bytes]:
    with file:
        while piece := file.read(PIECE_BYTES):
            yield piece


def _closing(pieces: Iterator[bytes], body: Any) -> Iterator[bytes]:
    try:
        yield from pieces
    finally:
        body.close()
