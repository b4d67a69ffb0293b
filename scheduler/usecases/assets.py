"""A studio's contents and manifests: what it must upload, what it stored, what a job
may name; quotas and collecting what nothing names any more.

Concurrency (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` runs one writer at a time):
- An upload locks its studio's row while it checks and charges the quota, so two
  uploads at once cannot both fit into the room one of them leaves.
- Collection deletes by age (``added_at``, ``stored_at``). Uploading a content and
  naming it in a manifest both refresh those times on the rows they rely on, taking
  their locks: a collection that reached a row first has deleted it (the upload then
  stores the content anew; the manifest asks for it again), and one that comes after
  waits, re-reads the refreshed time and keeps it.

No existence oracle: whether the farm already stores a content is never told to a
studio that did not send it itself. ``missing`` answers from the studio's own contents
only, so a studio sends a content another studio sent too, once, and its bytes are
checked against the hash before the studio may name it; the farm still keeps one copy.
"""

from __future__ import annotations

import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy import and_, delete, func, insert, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from scheduler.core.assets import ManifestEntry, ManifestError, is_blob_hash, parse_manifest
from scheduler.db import BlobRow, ManifestFile, ManifestRow, Studio, StudioBlob
from scheduler.db.engine import insert_or
from scheduler.errors import Conflict, InvalidRequest, NotFound, TooLarge
from scheduler.settings import Settings
from scheduler.usecases.blobstore import SPOOL_MAX_AGE_SECONDS, BlobStore, BlobWriter

MISSING_LISTED = 20  # how many missing contents an error names
BOUND_VALUES = 5_000  # hashes per statement
DEADLOCK = "40P01"  # PostgreSQL's SQLSTATE for a transaction chosen as a deadlock's victim
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Missing:
    hashes: list[str]  # contents the studio has to send, each once
    bytes: int


@dataclass(frozen=True, slots=True)
class Collected:
    studio_contents: int  # a studio's claims on contents that nothing names any more
    blobs: int  # contents no studio claims, deleted from the store
    bytes: int
    spooled: int  # uploads a crash left half-spooled, removed


class AssetService:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        store: BlobStore,
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

    def check_hash(self, blob_hash: str) -> None:
        if not is_blob_hash(blob_hash):
            raise InvalidRequest(
                "hash", "a content's name is its SHA-256: 64 lowercase hex", source="path"
            )

    def begin_upload(self, studio_id: int, blob_hash: str) -> BlobWriter:
        self.check_hash(blob_hash)
        return self.store.begin()

    def finish_upload(self, studio_id: int, blob_hash: str, writer: BlobWriter) -> int:
        """Keep an uploaded content if it is what its hash says, and charge the studio."""
        try:
            writer.close()
            problem = self._problem(blob_hash, writer)
            if problem is not None:
                raise problem
            self._keep(studio_id, [(blob_hash, writer)])
            return writer.size
        finally:
            writer.abort()  # what was not kept (a no-op for what was)

    def receive_batch(
        self, studio_id: int, archive: Path
    ) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
        """Many small contents in one request: a tar whose members are named by their
        SHA-256. Each is checked like a single upload; a member that is not what its
        name says, or past the quota, is refused with the reason, the others are kept,
        all charged in one transaction. (stored, refused)."""
        refused: list[tuple[str, str]] = []
        checked: list[tuple[str, BlobWriter]] = []
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
                    checked.append((name, writer))
                    while chunk := source.read(1 << 20):
                        writer.write(chunk)
                    writer.close()  # (thousands of them wait for one transaction)
                    problem = self._problem(name, writer)
                    if problem is not None:
                        checked.pop()
                        writer.abort()
                        refused.append((name, str(problem)))
            over = self._keep(studio_id, checked)
        except tarfile.TarError as error:
            raise InvalidRequest("body", f"not a tar archive: {error}") from None
        finally:
            for _name, writer in checked:
                writer.abort()  # what was not kept (a no-op for what was)
        stored = [(name, writer.size) for name, writer in checked if name not in over]
        return stored, refused + [(name, over[name]) for name, _writer in checked if name in over]

    def _problem(self, blob_hash: str, writer: BlobWriter) -> Exception | None:
        """Why an upload cannot be kept, or None."""
        if writer.size > self.settings.max_blob_bytes:
            return TooLarge(f"a file is at most {self.settings.max_blob_bytes} bytes")
        if writer.hexdigest != blob_hash:
            return InvalidRequest(
                "body",
                f"the content's SHA-256 is {writer.hexdigest}, not {blob_hash}: nothing was kept",
            )
        return None

    def _keep(self, studio_id: int, uploads: list[tuple[str, BlobWriter]]) -> dict[str, str]:
        """Charge the studio for checked uploads in one transaction, put their files in
        the storage, then mark the claims stored. Until then the studio does not have
        the contents (it is asked for them again): a storage that fails or a process
        that dies in between leaves nothing a manifest could name. A content the studio
        has already costs nothing and is not stored again; one it was charged for but
        that never reached the storage is stored now, not charged twice. Returns the
        contents refused for the quota, with the reason; with a single upload, the
        refusal is raised (``TooLarge``)."""
        names = sorted({name for name, _writer in uploads})
        new, over = _retrying_deadlocks(lambda: self._charge(studio_id, uploads, names))
        if len(uploads) == 1 and over:
            raise TooLarge(next(iter(over.values())))
        done: list[str] = []
        try:
            for name, writer in uploads:
                if name in new and name not in done:
                    writer.commit(name)
                    done.append(name)
        finally:
            if done:
                with Session(self.engine) as session:
                    _mark_stored(session, studio_id, done)
                    session.commit()
        return over

    def _charge(
        self, studio_id: int, uploads: list[tuple[str, BlobWriter]], names: list[str]
    ) -> tuple[set[str], dict[str, str]]:
        """The claims, pending, within the quota: (contents to store, refused ones)."""
        quota = self.settings.studio_quota_bytes
        now = self.clock()
        with Session(self.engine) as session:
            session.exec(select(Studio.id).where(Studio.id == studio_id).with_for_update()).one()
            owned = _owned(session, studio_id, names)
            pending = _owned(session, studio_id, names, stored=False)
            stored = _stored(session, studio_id)  # pending claims hold their room
            new: dict[str, int] = {}
            over: dict[str, str] = {}
            for name, writer in uploads:
                if name in owned or name in new:
                    continue
                if name not in pending and stored + writer.size > quota:
                    over[name] = (
                        f"the studio's quota of {quota} bytes would be exceeded "
                        f"({stored} stored, {writer.size} more)"
                    )
                    continue
                stored += 0 if name in pending else writer.size
                new[name] = writer.size
            _claim(session, studio_id, {h: n for h, n in new.items() if h not in pending}, now)
            _refresh_claims(session, studio_id, sorted(set(new) & set(pending)), now, stored=False)
            session.commit()
        return set(new), over

    def create_manifest(
        self,
        studio_id: int,
        entries: Sequence[ManifestEntry],
        keep: Callable[[Session, ManifestRow], None] | None = None,
    ) -> ManifestRow:
        """A manifest of the studio's own contents; naming any other content is refused.
        ``keep`` is called in its transaction before it commits (an idempotency key's
        record, committed with the manifest or not at all)."""
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
            kept = _refresh_claims(session, studio_id, sorted(owned), now)
            if kept < len(owned):  # a collection took some after they were read
                raise Conflict("some of these contents were just collected: send them again")
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
            if keep is not None:
                keep(session, manifest)
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
        sent longer than the retention ago, and claims whose content never reached the
        storage; then delete contents nobody claims, and what crashed uploads left in
        the spool."""
        now = self.clock()
        cutoff = now - self.settings.blob_retention_seconds
        with Session(self.engine) as session:  # committed alone: whatever happens to the
            named = (  # files below, no claim comes back for a content that is gone
                select(ManifestFile.hash)
                .join(ManifestRow, col(ManifestRow.id) == col(ManifestFile.manifest_id))
                .where(
                    col(ManifestRow.studio_id) == col(StudioBlob.studio_id),
                    col(ManifestFile.hash) == col(StudioBlob.hash),
                )
            )
            dropped = session.execute(
                delete(StudioBlob).where(
                    or_(
                        and_(col(StudioBlob.added_at) < cutoff, ~named.exists()),
                        and_(
                            col(StudioBlob.stored).is_(False),
                            col(StudioBlob.added_at) < now - SPOOL_MAX_AGE_SECONDS,
                        ),
                    )
                )
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
        with Session(self.engine) as session:
            claimed = select(StudioBlob.hash).where(col(StudioBlob.hash) == col(BlobRow.hash))
            orphans = session.execute(
                delete(BlobRow)
                .where(~claimed.exists(), col(BlobRow.stored_at) < cutoff)
                .returning(col(BlobRow.hash), col(BlobRow.size))
            ).all()
            # The files go while the rows are locked: an upload of the same content waits,
            # then stores it anew (its file after its row). A failure or a crash before
            # the commit leaves rows nobody claims, some without files: an upload stores
            # the file again, the next collection deletes the rest.
            for blob_hash, _size in sorted(orphans):
                self.store.delete(blob_hash)
            session.commit()
        spooled = self.store.sweep_spool()
        return Collected(dropped, len(orphans), sum(size for _hash, size in orphans), spooled)


def _owned(
    session: Session, studio_id: int, hashes: Iterable[str], stored: bool = True
) -> dict[str, int]:
    """Which of these contents the studio has (or, ``stored=False``, was charged for but
    has not stored yet), with their sizes."""
    found: dict[str, int] = {}
    for part in _parts(list(hashes)):
        found.update(
            session.exec(
                select(StudioBlob.hash, StudioBlob.size).where(
                    StudioBlob.studio_id == studio_id,
                    col(StudioBlob.stored).is_(stored),
                    col(StudioBlob.hash).in_(part),
                )
            ).all()
        )
    return found


def _refresh_claims(
    session: Session, studio_id: int, hashes: list[str], now: float, stored: bool = True
) -> int:
    """Mark the studio's claims on these contents as used now; how many still exist."""
    kept = 0
    for part in _parts(hashes):
        kept += session.execute(
            update(StudioBlob)
            .where(
                col(StudioBlob.studio_id) == studio_id,
                col(StudioBlob.stored).is_(stored),
                col(StudioBlob.hash).in_(part),
            )
            .values(added_at=now)
        ).rowcount  # type: ignore[attr-defined]
    return kept


def _mark_stored(session: Session, studio_id: int, hashes: list[str]) -> None:
    for part in _parts(sorted(hashes)):
        session.execute(
            update(StudioBlob)
            .where(col(StudioBlob.studio_id) == studio_id, col(StudioBlob.hash).in_(part))
            .values(stored=True)
        )


def _claim(session: Session, studio_id: int, contents: dict[str, int], now: float) -> None:
    """The studio's claims on new contents (hash -> size), pending, and the contents'
    rows: an existing row's time refreshed (taking its lock: a collection waits, then
    keeps it), a missing one inserted, also where another upload inserts it at the
    moment. In hash order, so that two batches lock rows in one order (no deadlock)."""
    hashes = sorted(contents)
    for part in _parts(hashes):
        session.execute(update(BlobRow).where(col(BlobRow.hash).in_(part)).values(stored_at=now))
    insert_new = insert_or(session, BlobRow).on_conflict_do_nothing()
    for part in _parts(hashes):
        session.execute(
            insert_new, [{"hash": h, "size": contents[h], "stored_at": now} for h in part]
        )
    for part in _parts(hashes):
        session.execute(
            insert(StudioBlob),
            [
                {
                    "studio_id": studio_id,
                    "hash": h,
                    "size": contents[h],
                    "added_at": now,
                    "stored": False,
                }
                for h in part
            ],
        )


def _parts(values: list[str]) -> Iterator[list[str]]:
    """``values`` in parts that keep under every database's limit of bound values."""
    for start in range(0, len(values), BOUND_VALUES):
        yield values[start : start + BOUND_VALUES]


def _retrying_deadlocks(transaction: Callable[[], T], attempts: int = 3) -> T:
    """Run ``transaction`` again where PostgreSQL chose it as a deadlock's victim."""
    for attempt in range(attempts):
        try:
            return transaction()
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != DEADLOCK or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _stored(session: Session, studio_id: int) -> int:
    total = session.exec(
        select(func.coalesce(func.sum(StudioBlob.size), 0)).where(StudioBlob.studio_id == studio_id)
    ).one()
    return int(total)
