"""Contents in the farm's storage (a folder or object storage: scheduler/wire/storage.py).

A blob is written to a local spool file as it arrives, hashed on the way, and adopted
into the storage (``blobs/ab/cd/<sha256>``: a rename, or an upload) only if its hash is
the one claimed. Nothing is held in memory whole.
"""

from __future__ import annotations

import hashlib
import json
from typing import IO

from scheduler.core.assets import blob_key
from scheduler.wire.storage import Storage, open_storage

__all__ = ["BlobStore", "BlobWriter", "open_storage"]  # the API opens the storage here

SPOOL_MAX_AGE_SECONDS = 6 * 3600  # a spool file untouched this long is a crashed upload's


class BlobWriter:
    """One content on its way in: ``write`` pieces, then ``commit`` or ``abort``."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._file: IO[bytes]
        self._file, self._path = storage.spool_file("blob")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        """Done writing: the file waits, closed, for ``commit`` or ``abort``."""
        self._file.close()

    def commit(self, expected: str) -> bool:
        """Keep the content if its hash is ``expected``; False (and nothing kept) if not.

        The file is put in place even if one is there already: the same bytes, and a
        collection that removed it meanwhile cannot leave a row without its file."""
        self._file.close()
        if self.hexdigest != expected:
            self._path.unlink(missing_ok=True)
            return False
        self._storage.adopt(blob_key(expected), self._path)
        return True

    def abort(self) -> None:
        """Keep nothing (a no-op once committed)."""
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def has(self, blob_hash: str) -> bool:
        return self.storage.stat(blob_key(blob_hash)) is not None

    def begin(self) -> BlobWriter:
        return BlobWriter(self.storage)

    def delete(self, blob_hash: str) -> None:
        self.storage.delete(blob_key(blob_hash))

    def publish_manifest(self, manifest_id: int, entries: list[dict[str, object]]) -> None:
        """A manifest's files as JSON beside the contents, for nodes that read the
        storage directly (the database stays the truth; this is a copy nodes can read)."""
        body = json.dumps({"id": manifest_id, "entries": entries}).encode()
        self.storage.put_bytes(f"manifests/{manifest_id}.json", body)

    def sweep_spool(self) -> int:
        """Spooled uploads that a crash left behind, removed."""
        return self.storage.sweep_spool(SPOOL_MAX_AGE_SECONDS)
