"""A node's content cache shared by its Celery prefork processes: real processes, one
cache folder. A content two processes want is fetched once; a path ``get`` returns is
still there when the caller links it, even while other processes evict; the cache keeps
to its size, least recently used out first, whichever process used what."""

from __future__ import annotations

import fcntl
import hashlib
import multiprocessing
import os
import random
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest

from workers.assets import BlobCache, FileEntry

pytestmark = pytest.mark.integration
SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing shared by fork
DEADLINE = 60.0


class FolderFiles:
    """Contents from a folder (named by hash), each fetch counted in a file under flock,
    so that fetches by any process add up."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.counter = folder / "fetches"

    def manifest(self, manifest_id: int) -> list[FileEntry]:
        return []

    def fetch(self, blob_hash: str, out: Any) -> None:
        with open(self.counter, "a") as counter:
            fcntl.flock(counter, fcntl.LOCK_EX)
            counter.write(blob_hash + "\n")
        out.write((self.folder / blob_hash).read_bytes())

    def fetches(self) -> list[str]:
        return self.counter.read_text().split() if self.counter.exists() else []


class GatedFiles(FolderFiles):
    """A farm that sends nothing until ``expected`` processes have asked the cache, so
    that they all ask while the content is still missing."""

    def __init__(self, folder: Path, arrivals: Path, expected: int) -> None:
        super().__init__(folder)
        self.arrivals = arrivals
        self.expected = expected

    def fetch(self, blob_hash: str, out: Any) -> None:
        deadline = time.monotonic() + DEADLINE
        while len(list(self.arrivals.iterdir())) < self.expected:
            if time.monotonic() > deadline:
                raise TimeoutError("not every process asked for the content")
            time.sleep(0.01)
        super().fetch(blob_hash, out)


def farm_folder(folder: Path, sizes: list[int]) -> list[FileEntry]:
    """Contents of the given sizes in ``folder``, and their entries."""
    folder.mkdir(parents=True)
    entries = []
    for n, size in enumerate(sizes):
        data = random.Random(n).randbytes(size)
        blob_hash = hashlib.sha256(data).hexdigest()
        (folder / blob_hash).write_bytes(data)
        entries.append(FileEntry(f"f{n}", blob_hash, size))
    return entries


def cached(root: Path) -> dict[str, int]:
    """What is in the cache: hash -> size."""
    return {p.name: p.stat().st_size for p in (root / "blobs").rglob("*") if p.is_file()}


def blob(root: Path, blob_hash: str) -> Path:
    return root / "blobs" / blob_hash[:2] / blob_hash[2:4] / blob_hash


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# What the processes run (top level, so that a spawned interpreter can import it).


def report(results: Any, index: int, work: Callable[..., Any], *args: Any) -> None:
    try:
        results.put((index, "ok", work(*args)))
    except BaseException as error:
        results.put((index, "error", repr(error)))


def ask_once(root: Path, source: FolderFiles, entry: FileEntry, arrivals: Path, n: int) -> Any:
    cache = BlobCache(root, max_bytes=10**9)
    (arrivals / str(n)).touch()
    path = cache.get(entry, source)
    return cache.fetched, str(path), digest(path)


def use_and_link(
    root: Path, max_bytes: int, source: FolderFiles, entries: list[FileEntry], seed: int
) -> list[str]:
    """Use the entries in a shuffled order, linking each as an attempt does: what went
    wrong (a path gone before the link, a linked file not what it should be)."""
    cache = BlobCache(root, max_bytes)
    links = root.parent / f"attempt-{seed}"
    links.mkdir()
    problems = []
    order = random.Random(seed)
    for round_ in range(3):
        for n, entry in enumerate(order.sample(entries, len(entries))):
            path = cache.get(entry, source)
            dest = links / f"{round_}-{n}"
            try:
                os.link(path, dest)
            except FileNotFoundError:
                problems.append(f"{entry.path}: gone before the link")
                continue
            if digest(dest) != entry.hash:
                problems.append(f"{entry.path}: not its content")
            dest.unlink()
    cache.release()
    return problems


def use_in_order(root: Path, max_bytes: int, source: FolderFiles, entries: list[FileEntry]) -> int:
    cache = BlobCache(root, max_bytes)
    for entry in entries:
        cache.get(entry, source)
    cache.release()
    return cache.fetched


def hold(
    root: Path, max_bytes: int, source: FolderFiles, entry: FileEntry, held: Event, go: Event,
    dest: Path,
) -> str:  # fmt: skip
    """Get a content, then link it only when told: meanwhile other processes evict."""
    cache = BlobCache(root, max_bytes)
    path = cache.get(entry, source)
    held.set()
    if not go.wait(DEADLINE):
        raise TimeoutError("never told to link")
    os.link(path, dest)
    cache.release()
    return digest(dest)


def run_together(work: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``work(*args)`` for each call, each in its own process, all at once; their
    results in call order (a failure in any fails the test)."""
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=report, args=(results, n, work, *args)) for n, args in enumerate(calls)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, Any] = {}
    try:
        for _ in processes:
            index, status, value = results.get(timeout=DEADLINE)
            assert status == "ok", value
            outcomes[index] = value
    finally:
        for process in processes:
            process.join(DEADLINE)
            if process.is_alive():
                process.kill()
    return [outcomes[n] for n in range(len(calls))]


def test_processes_that_want_the_same_missing_content_fetch_it_once(tmp_path: Path) -> None:
    (entry,) = farm_folder(tmp_path / "farm", [64 * 1024])
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    source = GatedFiles(tmp_path / "farm", arrivals, expected=6)
    root = tmp_path / "cache"
    answers = run_together(ask_once, [(root, source, entry, arrivals, n) for n in range(6)])
    assert source.fetches() == [entry.hash]
    assert sum(fetched for fetched, _, _ in answers) == 1
    assert {(path, sha) for _, path, sha in answers} == {(str(blob(root, entry.hash)), entry.hash)}
    assert list((root / "locks").iterdir()) == []  # fetch locks go with the fetch


def test_processes_filling_a_small_cache_keep_to_its_size_and_never_lose_a_path(
    tmp_path: Path,
) -> None:
    entries = farm_folder(tmp_path / "farm", [512 * (1 + n % 7) for n in range(24)])
    source = FolderFiles(tmp_path / "farm")
    root = tmp_path / "cache"
    max_bytes = 12 * 1024  # a fraction of the 48 KiB the processes use
    problems = run_together(
        use_and_link, [(root, max_bytes, source, entries, seed) for seed in range(4)]
    )
    assert problems == [[], [], [], []]
    kept = cached(root)
    assert 0 < sum(kept.values()) <= max_bytes
    assert all(digest(blob(root, h)) == h for h in kept)
    assert BlobCache(root, max_bytes).total() == sum(kept.values())  # the ledger is right
    assert list((root / "incoming").iterdir()) == []
    assert len(source.fetches()) > len(entries)  # it did evict and fetch again


def test_the_least_recently_used_content_goes_first_whichever_process_used_it(
    tmp_path: Path,
) -> None:
    a, b, c, d, e = farm_folder(tmp_path / "farm", [1024] * 5)
    source = FolderFiles(tmp_path / "farm")
    root = tmp_path / "cache"
    kb4 = 4 * 1024
    assert run_together(use_in_order, [(root, kb4, source, [a, b, c, d])]) == [4]
    assert run_together(use_in_order, [(root, kb4, source, [a])]) == [0]  # a hit: a is recent
    (root / "ledger").unlink()  # lost: one scan rebuilds it
    assert run_together(use_in_order, [(root, kb4, source, [e])]) == [1]
    assert set(cached(root)) == {a.hash, c.hash, d.hash, e.hash}  # b was the oldest
    (root / "ledger").write_text("garbage")
    assert run_together(use_in_order, [(root, kb4, source, [b])]) == [1]
    assert set(cached(root)) == {a.hash, d.hash, e.hash, b.hash}  # then c
    assert BlobCache(root, kb4).total() == kb4


def test_a_content_another_process_is_about_to_link_is_not_evicted_until_it_has(
    tmp_path: Path,
) -> None:
    held_entry, *others = farm_folder(tmp_path / "farm", [1024] * 5)
    source = FolderFiles(tmp_path / "farm")
    root = tmp_path / "cache"
    held, go, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    dest = tmp_path / "attempt" / "scene.blend"
    dest.parent.mkdir()
    max_bytes = 1024  # room for one content
    holder = SPAWN.Process(
        target=report,
        args=(results, 0, hold, root, max_bytes, source, held_entry, held, go, dest),
    )
    holder.start()
    try:
        assert held.wait(DEADLINE)
        cache = BlobCache(root, max_bytes)
        for entry in others:  # the held content is the least recently used
            cache.get(entry, source)
        assert set(cached(root)) == {held_entry.hash, others[-1].hash}  # pinned: kept
        go.set()
        assert results.get(timeout=DEADLINE) == (0, "ok", held_entry.hash)
    finally:
        go.set()
        holder.join(DEADLINE)
    assert set(cached(root)) == {others[-1].hash}  # its release evicted what it had kept
    cache.release()
    assert dest.read_bytes() == (tmp_path / "farm" / held_entry.hash).read_bytes()
