"""Scenes and their files, addressed by content: manifests, paths and blob names. Pure.

A *blob* is a file's content, named by its SHA-256 (64 lowercase hex digits). A
*manifest* lists the files a job needs: each a relative path inside the job's tree, its
size, its blob's hash and its mtime. The farm stores each content once, whoever sent
it; a studio is charged for, and may name, only the contents it sent itself.

Why SHA-256 and not xxh3-128 (``python bench/hashing.py``): with SHA-NI it hashes at
about 1.7 GB/s on the development machine, faster than any east-west link or disk, so
xxh3's 20 GB/s buys nothing here; and xxh3 is not collision resistant, so a studio
could craft a file with another studio's hash and have the farm render its content in
the other studio's scene. Content shared across studios needs a cryptographic hash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
MAX_PATH_CHARS = 1024


class ManifestError(ValueError):
    """A manifest or one of its entries is not acceptable; the message says which."""


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    path: str  # relative, "/"-separated, normalised: "shots/sq010/sh020.blend"
    size: int
    hash: str
    mtime: float = 0.0


def is_blob_hash(value: str) -> bool:
    return HASH_PATTERN.fullmatch(value) is not None


def relative_path(path: str) -> str:
    """The path as a normalised relative path inside a job's tree, or ``ManifestError``.

    Refused: empty, absolute, a drive letter, backslashes, ``.`` or ``..`` parts, NUL
    or other control characters: a manifest can never name a file outside its tree.
    """
    if not path or len(path) > MAX_PATH_CHARS:
        raise ManifestError(f"a path has 1 to {MAX_PATH_CHARS} characters: {path[:80]!r}")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in path) or (
        "\\" in path
    ):
        raise ManifestError(
            f"control characters, lone surrogates and backslashes are not allowed: {path!r}"
        )
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        raise ManifestError(f"the path must be relative to the job's folder: {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ManifestError(f"empty, '.' and '..' parts are not allowed: {path!r}")
    return str(PurePosixPath(*parts))


def parse_manifest(
    entries: list[ManifestEntry], max_files: int, max_bytes: int
) -> list[ManifestEntry]:
    """Entries checked and normalised, in path order; each path appears once."""
    if not entries:
        raise ManifestError("a manifest lists at least one file")
    if len(entries) > max_files:
        raise ManifestError(f"a manifest lists at most {max_files} files, not {len(entries)}")
    seen: dict[str, ManifestEntry] = {}
    folders: set[str] = set()
    for entry in entries:
        path = relative_path(entry.path)
        if not is_blob_hash(entry.hash):
            raise ManifestError(f"{path}: a hash is 64 lowercase hex digits (SHA-256)")
        if entry.size < 0:
            raise ManifestError(f"{path}: a size is 0 or more bytes")
        if path in seen:
            raise ManifestError(f"{path} appears twice")
        seen[path] = ManifestEntry(path, entry.size, entry.hash, entry.mtime)
        folders.update(str(parent) for parent in PurePosixPath(path).parents)
    both = sorted(folders & set(seen))
    if both:
        raise ManifestError(f"{both[0]} is both a file and a folder")
    files = [seen[p] for p in sorted(seen)]
    total = sum(entry.size for entry in files)
    if total > max_bytes:
        raise ManifestError(f"a manifest holds at most {max_bytes} bytes, not {total}")
    return files


def blob_key(blob_hash: str) -> str:
    """Where a blob lives in a store: fanned out so no folder grows too large."""
    return f"blobs/{blob_hash[:2]}/{blob_hash[2:4]}/{blob_hash}"
