"""Manifests and the paths nodes may write: pure checks, table-driven."""

from __future__ import annotations

import pytest

from api.routes.internal import OUTPUT_PATH
from scheduler.core.assets import ManifestEntry, ManifestError, parse_manifest, relative_path

H = "a" * 64


@pytest.mark.parametrize(
    ("path", "normalised"),
    [("shots/sh020.blend", "shots/sh020.blend"), ("a b/ü.png", "a b/ü.png"), ("x", "x")],
)
def test_a_relative_path_inside_the_tree_is_kept(path: str, normalised: str) -> None:
    assert relative_path(path) == normalised


@pytest.mark.parametrize(
    "path",
    ["", "../x", "a/../../x", "/etc/passwd", "C:/x", "a\\b", "a//b", "a/./b", "a/", "nul\x00",
     "tab\tname", "x" * 1025],
)  # fmt: skip
def test_a_path_that_could_leave_the_tree_is_refused(path: str) -> None:
    with pytest.raises(ManifestError):
        relative_path(path)


def test_a_manifest_is_sorted_and_refuses_duplicates_folders_and_bad_hashes() -> None:
    entries = [ManifestEntry("b.png", 1, H), ManifestEntry("a.blend", 2, H)]
    assert [e.path for e in parse_manifest(entries, 10, 100)] == ["a.blend", "b.png"]
    for bad, reason in [
        ([ManifestEntry("a", 1, H), ManifestEntry("a", 1, H)], "twice"),
        ([ManifestEntry("a", 1, H), ManifestEntry("a/b", 1, H)], "both a file and a folder"),
        ([ManifestEntry("a", 1, "A" * 64)], "lowercase hex"),
        ([ManifestEntry("a", -1, H)], "0 or more"),
        ([ManifestEntry("a", 101, H)], "at most 100 bytes"),
        ([ManifestEntry(f"f{n}", 1, H) for n in range(11)], "at most 10 files"),
        ([], "at least one file"),
    ]:
        with pytest.raises(ManifestError, match=reason):
            parse_manifest(bad, 10, 100)


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("jobs/7/frames/frame_000001.png", True),
        ("jobs/7/logs/chunk-3-attempt-1.log", True),
        ("jobs/7/frames/../../../etc/x", False),
        ("jobs/7/frames/.hidden", False),
        ("jobs/7/frames/a/b.png", False),
        ("jobs/x/frames/f.png", False),
        ("blobs/ab/cd/" + H, False),
        ("jobs/7/thumbnails/f.jpg", False),
    ],
)
def test_nodes_write_only_into_a_jobs_frames_and_logs(path: str, allowed: bool) -> None:
    assert (OUTPUT_PATH.fullmatch(path) is not None) is allowed
