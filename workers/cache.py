"""A render node's contents by SHA-256, on its disk, at most ``max_bytes`` of them,
shared by all the node's processes (Celery prefork: one cache folder, many slots).

Every content is checked against its hash before it enters the cache, and kept
read-only. The least recently used content goes first; a cached file's mtime is its
last use. Callers hard-link the cached file where they need it, so evicting a content
after that never breaks a render that uses it.

Between processes, everything is ``fcntl.flock`` on files under the root, so a crashed
process holds nothing (the kernel drops its locks):

- ``locks/<hash>``, exclusive while one process fetches that content: a second process
  that wants it waits, then finds it cached. Different contents fetch in parallel.
- ``ledger``, exclusive for the moment a content enters or leaves the cache: it holds
  the running total of cached bytes, so a fetch costs no scan of the cache; the cache
  is scanned only to find what to evict, when the total exceeds ``max_bytes``, or to
  rebuild a missing or unreadable total. The total is raised before a content appears
  and lowered after one goes, so a crash can only over-count, which the next scan
  corrects.
- the cached file itself, shared by whoever was just given its path (a pin) until its
  next ``get`` or ``release``; eviction skips a pinned file, so a path from ``get`` is
  still there when the caller links it. A cache over its size because of pinned files
  evicts when they are released (the ledger says so: a hit reads it unlocked, to
  decide whether to take the lock).

Lock files are opened for each use, never kept open, because a descriptor inherited
across ``fork`` shares its lock with the parent and would exclude nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from scheduler.core.assets import blob_key

LEDGER_SIZE = 23  # "<total, 20 digits> <deferred, 0 or 1>\n": one write, one length


class FetchError(Exception):
    """A content or manifest could not be had, or was not what it claimed to be."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class Wanted(Protocol):
    """A content the cache is asked for: its hash, and a path to name it in errors."""

    @property
    def path(self) -> str: ...

    @property
    def hash(self) -> str: ...


class Source(Protocol):
    """Where missing contents come from (the node's ``FarmFiles``)."""

    def fetch(self, blob_hash: str, out: Sink) -> None: ...


class BlobCache:
    """Contents by hash on the node's disk, at most ``max_bytes`` of them (plus, for a
    moment, the files pinned by the node's processes)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.incoming = root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.locks = root / "locks"
        self.locks.mkdir(exist_ok=True)
        self.ledger = root / "ledger"
        self.fetched = 0  # contents this process fetched from the farm
        self.hits = 0
        self._pins = threading.local()  # each thread's pinned file descriptor
        self._clock = threading.Lock()
        self._last_use = 0

    def path(self, blob_hash: str) -> Path:
        return self.root / blob_key(blob_hash)

    def get(self, entry: Wanted, source: Source) -> Path:
        """The content's file in the cache, fetched and checked first if need be. It
        stays there at least until this thread's next ``get`` or ``release``."""
        self.release()
        target = self.path(entry.hash)
        pin = _pin(target)
        if pin is None:
            with self._fetching(entry.hash):
                pin = _pin(target)  # another process fetched it while this one waited
                if pin is None:
                    self._pins.fd = self._fetch(entry, source, target)
                    self.fetched += 1
                    return target
        self._pins.fd = pin
        self._touch(target)  # most recently used
        self.hits += 1
        return target

    def release(self) -> None:
        """Unpin the file this thread was last given; evict what pins kept if the
        cache is over its size."""
        pin = getattr(self._pins, "fd", None)
        if pin is None:
            return
        self._pins.fd = None
        os.close(pin)
        if self._deferred_hint():
            with self._ledger() as ledger:
                if ledger.deferred:
                    self._evict(ledger, keep=None)

    def total(self) -> int:
        """Bytes cached, as the ledger counts them."""
        with self._ledger() as ledger:
            return ledger.total

    def _fetch(self, entry: Wanted, source: Source, target: Path) -> int:
        """Fetch, check and install the content; its pin, taken before it is visible."""
        name = self._download(entry, source)
        pin = os.open(name, os.O_RDONLY)
        try:
            fcntl.flock(pin, fcntl.LOCK_SH)
            self._touch(Path(name))  # os.replace keeps the mtime
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._ledger() as ledger:
                ledger.total += os.fstat(pin).st_size  # before it appears: never under
                os.replace(name, target)
                if ledger.total > self.max_bytes:
                    self._evict(ledger, keep=target)
        except BaseException:
            os.close(pin)
            Path(name).unlink(missing_ok=True)
            raise
        return pin

    def _download(self, entry: Wanted, source: Source) -> str:
        """The content in a read-only file under ``incoming``, checked against its hash."""
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
        os.chmod(name, 0o444)  # read-only: an attempt's hard link cannot rewrite it
        return name

    def _evict(self, ledger: _Ledger, keep: Path | None) -> None:
        """Least recently used first, down to ``max_bytes``, skipping pinned files.
        The scan also sets the total right, whatever a crash left in the ledger."""
        files = sorted(self._scan(), key=lambda f: f[0].st_mtime_ns)
        ledger.total = sum(stat.st_size for stat, _ in files)
        pinned = False
        for stat, path in files:
            if ledger.total <= self.max_bytes:
                break
            if path == keep:
                continue
            if _remove_unpinned(path):
                ledger.total -= stat.st_size
            else:
                pinned = True
        ledger.deferred = pinned and ledger.total > self.max_bytes

    def _scan(self) -> Iterator[tuple[os.stat_result, Path]]:
        """Every cached file with its stat (``blobs/ab/cd/<hash>``)."""
        blobs = self.root / "blobs"
        for first in _folders(blobs):
            for second in _folders(Path(first)):
                with os.scandir(second) as entries:
                    for entry in entries:
                        try:
                            if entry.is_file(follow_symlinks=False):
                                yield entry.stat(follow_symlinks=False), Path(entry.path)
                        except FileNotFoundError:
                            continue

    @contextmanager
    def _fetching(self, blob_hash: str) -> Iterator[None]:
        """Hold the content's fetch lock. The lock file goes when the fetch is done;
        a process that waited on the removed file starts over on a new one."""
        path = self.locks / blob_hash
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            if _is_current(fd, path):
                break
            os.close(fd)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while held, so no one else holds it
            os.close(fd)

    @contextmanager
    def _ledger(self) -> Iterator[_Ledger]:
        """The cache-wide lock, held briefly, and the running total it keeps."""
        fd = os.open(self.ledger, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            recorded = _Ledger.parse(os.pread(fd, LEDGER_SIZE, 0))
            if recorded is None:  # missing or unreadable: one scan rebuilds it
                recorded = _Ledger(sum(stat.st_size for stat, _ in self._scan()))
            ledger = _Ledger(recorded.total, recorded.deferred)
            yield ledger
            if ledger != recorded or os.fstat(fd).st_size != LEDGER_SIZE:
                os.pwrite(fd, ledger.encode(), 0)
        finally:
            os.close(fd)

    def _deferred_hint(self) -> bool:
        """Whether an eviction waits for pins, read without the lock: enough to decide
        whether to take it (an unreadable ledger says "take it": that rebuilds it)."""
        try:
            recorded = _Ledger.parse(self.ledger.read_bytes())
        except FileNotFoundError:
            return False
        return recorded is None or recorded.deferred

    def _touch(self, path: Path) -> None:
        """Its mtime is its last use, to the nanosecond (file systems' own clock for
        "now" is coarser, and ties would make the eviction order arbitrary)."""
        with self._clock:
            now = max(time.time_ns(), self._last_use + 1)
            self._last_use = now
        os.utime(path, ns=(now, now))


@dataclass(slots=True)
class _Ledger:
    """The running total of cached bytes, and whether an eviction waits for pins to be
    released (as read or written under the cache-wide lock)."""

    total: int
    deferred: bool = False

    @classmethod
    def parse(cls, data: bytes) -> _Ledger | None:
        fields = data.decode("ascii", "replace").split()
        if len(fields) != 2 or not fields[0].isdigit() or fields[1] not in ("0", "1"):
            return None
        return cls(int(fields[0]), fields[1] == "1")

    def encode(self) -> bytes:
        return f"{self.total:020d} {int(self.deferred)}\n".encode()


def _pin(path: Path) -> int | None:
    """A shared lock on the cached file, or None when it is not (or no longer) there.
    Blocking is brief: an evicting process holds its lock only to unlink the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    if _is_current(fd, path):
        return fd
    os.close(fd)  # evicted between the open and the lock
    return None


def _remove_unpinned(path: Path) -> bool:
    """Remove a cached file that no process has pinned; whether it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one since removed)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _folders(path: Path) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


class _Hashing:
    """A file that hashes what is written to it."""

    def __init__(self, out: BinaryIO, digest: Any) -> None:
        self.out = out
        self.digest = digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.out.write(data)
