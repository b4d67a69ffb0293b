"""A studio's contents and manifests: what it must upload, what it stored, what a job
may name; quotas and collecting what nothing names any more.

No existence oracle: whether the farm already stores a content is never told to a
studio that did not send it itself. ``missing`` answers from the studio's own contents
only, so a studio sends a content another studio sent too, once, and its bytes are
checked against the hash before the studio may name it; the farm still keeps one copy.
"""

from __future__ import annotations

import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from scheduler.core.assets import ManifestEntry, ManifestError, is_blob_hash, parse_manifest
from scheduler.db import BlobRow, ManifestFile, ManifestRow, StudioBlob
from scheduler.errors import Conflict, InvalidRequest, NotFound, TooLarge
from scheduler.settings import Settings
from scheduler.usecases.blobstore import BlobWriter, LocalBlobStore

MISSING_LISTED = 20  # how many missing contents an error names


@dataclass(frozen=True, slots=True)
class Missing:
    hashes: list[str]  # contents the studio has to send, each once
    bytes: int


@dataclass(frozen=True, slots=True)
class Collected:
    studio_contents: int  # a studio's claims on contents that nothing names any more
    blobs: int  # contents no studio claims, deleted from the store
    bytes: int


class AssetService:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        store: LocalBlobStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.store = store
        self.clock = clock

    @property
    def max_blob_bytes(self) -> int:
        return self.settings.max_blob_bytes

    @property
    def max_batch_bytes(self) -> int:
        return self.settings.max_batch_bytes

    def _entries(self, entries: Sequence[ManifestEntry]) -> list[ManifestEntry]:
        try:
            return parse_manifest(
                list(entries), self.settings.max_manifest_files, self.settings.studio_quota_bytes
            )
        except ManifestError as error:
            raise InvalidRequest("files", str(error)) from None

    def missing(self, studio_id: int, entries: Sequence[ManifestEntry]) -> Missing:
        """The contents of these files that the studio has not sent yet."""
        files = self._entries(entries)
        sizes = {entry.hash: entry.size for entry in files}
        with Session(self.engine) as session:
            owned = _owned(session, studio_id, sizes)
        wanted = sorted(set(sizes) - set(owned))
        return Missing(wanted, sum(sizes[h] for h in wanted))

    def owned_size(self, studio_id: int, blob_hash: str) -> int | None:
        """The size of a content the studio sent, or None if it did not."""
        with Session(self.engine) as session:
            return _owned(session, studio_id, [blob_hash]).get(blob_hash)

    def room_left(self, studio_id: int) -> int:
        """Bytes the studio may still store, within its quota."""
        with Session(self.engine) as session:
            return max(0, self.settings.studio_quota_bytes - _stored(session, studio_id))

    def begin_upload(self, studio_id: int, blob_hash: str) -> BlobWriter:
        if not is_blob_hash(blob_hash):
            raise InvalidRequest("hash", "a content's name is its SHA-256: 64 lowercase hex")
        return self.store.begin()

    def finish_upload(self, studio_id: int, blob_hash: str, writer: BlobWriter) -> int:
        """Keep an uploaded content if it is what its hash says, and charge the studio."""
        if writer.size > self.settings.max_blob_bytes:
            writer.abort()
            raise TooLarge(f"a file is at most {self.settings.max_blob_bytes} bytes")
        size, found = writer.size, writer.hexdigest
        if found != blob_hash:
            writer.abort()
            raise InvalidRequest(
                "body", f"the content's SHA-256 is {found}, not {blob_hash}: nothing was kept"
            )
        try:  # the rows first (the quota may refuse), then the file: no file without a row
            self._record(studio_id, blob_hash, size)
        except BaseException:
            writer.abort()
            raise
        writer.commit(blob_hash)
        return size

    def _record(self, studio_id: int, blob_hash: str, size: int) -> None:
        now = self.clock()
        with Session(self.engine) as session:
            if _owned(session, studio_id, [blob_hash]):
                return  # a repeated upload of the studio's own content: nothing to do
            stored = _stored(session, studio_id)
            if stored + size > self.settings.studio_quota_bytes:
                raise TooLarge(
                    f"the studio's quota of {self.settings.studio_quota_bytes} bytes would be "
                    f"exceeded ({stored} stored, {size} more)"
                )
            try:
                if session.get(BlobRow, blob_hash) is None:
                    session.add(BlobRow(hash=blob_hash, size=size, stored_at=now))
                    session.flush()
                session.add(
                    StudioBlob(studio_id=studio_id, hash=blob_hash, size=size, added_at=now)
                )
                session.commit()
            except IntegrityError:  # the same content, uploaded at the same moment: stored
                session.rollback()

    def receive_batch(
        self, studio_id: int, archive: Path
    ) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
        """Many small contents in one request: a tar whose members are named by their
        SHA-256. Each is checked and kept like a single upload; a member that is not
        is refused with the reason, the others are kept. (stored, refused)."""
        stored: list[tuple[str, int]] = []
        refused: list[tuple[str, str]] = []
        try:
            with tarfile.open(archive, mode="r:") as tar:
                unpacked = 0
                for member in tar:
                    name = member.name.rsplit("/", 1)[-1]
                    regular = member.type in (tarfile.REGTYPE, tarfile.AREGTYPE)  # not sparse
                    if not regular or not is_blob_hash(name):
                        refused.append((member.name[:200], "not a file named by its SHA-256"))
                        continue
                    unpacked += member.size
                    if unpacked > self.settings.max_batch_bytes:
                        raise TooLarge(
                            f"a batch unpacks to at most {self.settings.max_batch_bytes} bytes"
                        )
                    source = tar.extractfile(member)
                    assert source is not None
                    writer = self.store.begin()
                    try:
                        while chunk := source.read(1 << 20):
                            writer.write(chunk)
                        stored.append((name, self.finish_upload(studio_id, name, writer)))
                    except (InvalidRequest, TooLarge) as error:
                        refused.append((name, str(error)))
                    except BaseException:
                        writer.abort()
                        raise
        except tarfile.TarError as error:
            raise InvalidRequest("body", f"not a tar archive: {error}") from None
        return stored, refused

    def create_manifest(self, studio_id: int, entries: Sequence[ManifestEntry]) -> ManifestRow:
        """A manifest of the studio's own contents; naming any other content is refused."""
        files = self._entries(entries)
        now = self.clock()
        with Session(self.engine) as session:
            owned = _owned(session, studio_id, {entry.hash for entry in files})
            lacking = sorted({entry.hash for entry in files} - set(owned))
            if lacking:
                raise Conflict(
                    f"send these {len(lacking)} content(s) first (PUT /v1/blobs/<sha256>): "
                    + ", ".join(lacking[:MISSING_LISTED])
                    + (" ..." if len(lacking) > MISSING_LISTED else "")
                )
            for entry in files:
                if entry.size != owned[entry.hash]:
                    raise InvalidRequest(
                        "files", f"{entry.path}: its content has {owned[entry.hash]} bytes"
                    )
            manifest = ManifestRow(
                studio_id=studio_id,
                files=len(files),
                size=sum(entry.size for entry in files),
                created_at=now,
            )
            session.add(manifest)
            session.flush()
            assert manifest.id is not None
            session.execute(
                insert(ManifestFile),
                [
                    {
                        "manifest_id": manifest.id,
                        "path": entry.path,
                        "hash": entry.hash,
                        "size": entry.size,
                        "mtime": entry.mtime,
                    }
                    for entry in files
                ],
            )
            session.commit()
            session.refresh(manifest)
        self.store.publish_manifest(
            manifest.id,
            [{"path": e.path, "hash": e.hash, "size": e.size, "mtime": e.mtime} for e in files],
        )
        return manifest

    def manifest(self, studio_id: int, manifest_id: int) -> tuple[ManifestRow, list[ManifestFile]]:
        """The studio's manifest and its files; another studio's is ``NotFound``."""
        with Session(self.engine) as session:
            manifest = session.get(ManifestRow, manifest_id)
            if manifest is None or manifest.studio_id != studio_id:
                raise NotFound(f"no manifest {manifest_id}")
            files = session.exec(
                select(ManifestFile)
                .where(ManifestFile.manifest_id == manifest_id)
                .order_by(col(ManifestFile.path))
            ).all()
            return manifest, list(files)

    def files_for_node(self, manifest_id: int) -> list[ManifestFile]:
        """A manifest's files, for a render node (authenticated by the node token)."""
        with Session(self.engine) as session:
            if session.get(ManifestRow, manifest_id) is None:
                raise NotFound(f"no manifest {manifest_id}")
            return list(
                session.exec(
                    select(ManifestFile)
                    .where(ManifestFile.manifest_id == manifest_id)
                    .order_by(col(ManifestFile.path))
                )
            )

    def collect_garbage(self) -> Collected:
        """Drop a studio's claim on contents that none of its manifests names and that it
        sent longer than the retention ago; then delete contents nobody claims."""
        cutoff = self.clock() - self.settings.blob_retention_seconds
        with Session(self.engine) as session:
            named = (
                select(ManifestFile.hash)
                .join(ManifestRow, col(ManifestRow.id) == col(ManifestFile.manifest_id))
                .where(ManifestRow.studio_id == StudioBlob.studio_id)
            )
            dropped = session.execute(
                delete(StudioBlob).where(
                    col(StudioBlob.added_at) < cutoff, col(StudioBlob.hash).not_in(named)
                )
            ).rowcount  # type: ignore[attr-defined]
            orphans = session.exec(
                select(BlobRow).where(
                    col(BlobRow.hash).not_in(select(StudioBlob.hash)),
                    col(BlobRow.stored_at) < cutoff,
                )
            ).all()
            for blob in orphans:
                session.delete(blob)
            session.commit()
        for blob in orphans:  # after the commit: a crash leaves a file, never a dangling row
            self.store.delete(blob.hash)
        return Collected(dropped, len(orphans), sum(blob.size for blob in orphans))


def _owned(session: Session, studio_id: int, hashes: Iterable[str]) -> dict[str, int]:
    """Which of these contents the studio sent, with their sizes."""
    wanted = list(hashes)
    found: dict[str, int] = {}
    for start in range(0, len(wanted), 5000):  # keeps under every database's bind limit
        found.update(
            session.exec(
                select(StudioBlob.hash, StudioBlob.size).where(
                    StudioBlob.studio_id == studio_id,
                    col(StudioBlob.hash).in_(wanted[start : start + 5000]),
                )
            ).all()
        )
    return found


def _stored(session: Session, studio_id: int) -> int:
    total = session.exec(
        select(func.coalesce(func.sum(StudioBlob.size), 0)).where(StudioBlob.studio_id == studio_id)
    ).one()
    return int(total)
