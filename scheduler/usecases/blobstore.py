"""Where contents are kept: a local folder (the default) under the storage root.

A blob is written to a temporary file as it arrives, hashed on the way, and moved into
place (``blobs/ab/cd/<sha256>``, an atomic rename) only if its hash is the one claimed;
a content already stored is not written twice. Nothing is held in memory whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO

from scheduler.core.assets import blob_key


class BlobWriter:
    """One content on its way in: ``write`` chunks, then ``commit`` or ``abort``."""

    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.incoming, prefix="blob-")
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def commit(self, expected: str) -> bool:
        """Keep the content if its hash is ``expected``; False (and nothing kept) if not.

        The file is put in place even if one is there already: the same bytes, and a
        collection that removed it meanwhile cannot leave a row without its file."""
        self._file.close()
        if self.hexdigest != expected:
            self._path.unlink(missing_ok=True)
            return False
        target = self._store.path(expected)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._path, target)
        except BaseException:
            self._path.unlink(missing_ok=True)
            raise
        return True

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "blobs" / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path(self, blob_hash: str) -> Path:
        return self.root / blob_key(blob_hash)

    def has(self, blob_hash: str) -> bool:
        return self.path(blob_hash).is_file()

    def begin(self) -> BlobWriter:
        return BlobWriter(self)

    def delete(self, blob_hash: str) -> None:
        self.path(blob_hash).unlink(missing_ok=True)

    def publish_manifest(self, manifest_id: int, entries: list[dict[str, object]]) -> None:
        """A manifest's files as JSON beside the contents, for nodes that mount the
        storage (the database stays the truth; this is a copy nodes can read)."""
        folder = self.root / "manifests"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".{manifest_id}-")
        with os.fdopen(fd, "w") as out:
            json.dump({"id": manifest_id, "entries": entries}, out)
        os.replace(name, folder / f"{manifest_id}.json")
