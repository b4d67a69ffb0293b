"""How far a frame is, read from Blender's own output, and how a node posts it.

The lines are Blender 4.5.15's, captured from the bpy module rendering small scenes:
Cycles at 4,000 samples (adaptive sampling stops it early), Cycles in 64 px tiles with
two view layers, Cycles with denoising, and EEVEE (Next) at 8 and 64 samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis

from scheduler.wire.progress import STATUS_LINE_MAX, ChunkProgress, FrameProgress
from workers.renderers.blender import PROGRESS_LINE, frame_samples

STATUS = "Fra:7 Mem:8.58M (Peak 8.58M) | Time:00:00.87 | Remaining:00:01.51 | Mem:0.17M, Peak:0.17M"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Cycles, one tile
        (
            "Fra:3 Mem:8.39M (Peak 8.39M) | Time:00:00.00 | Mem:0.00M, Peak:0.00M | "
            "Scene, ViewLayer | Synchronizing object | Cube",
            None,
        ),
        (
            "Fra:3 Mem:8.30M (Peak 8.39M) | Time:00:00.00 | Mem:0.09M, Peak:0.09M | "
            "Scene, ViewLayer | Updating Device | Writing constant memory",
            None,
        ),
        (
            "Fra:3 Mem:8.30M (Peak 8.39M) | Time:00:00.00 | Mem:0.09M, Peak:0.09M | "
            "Scene, ViewLayer | Sample 0/4000",
            None,  # as the layer starts
        ),
        (
            "Fra:3 Mem:10.30M (Peak 10.30M) | Time:00:00.02 | Remaining:01:10.93 | "
            "Mem:2.07M, Peak:2.07M | Scene, ViewLayer | Sample 1/4000",
            (3, 1, 4000),
        ),
        (
            "Fra:3 Mem:10.30M (Peak 10.30M) | Time:00:01.04 | Remaining:00:03.59 | "
            "Mem:2.07M, Peak:2.07M | Scene, ViewLayer | Sample 896/4000",
            (3, 896, 4000),
        ),
        (
            "Fra:3 Mem:11.18M (Peak 12.06M) | Time:00:01.04 | Remaining:00:03.60 | "
            "Mem:2.07M, Peak:2.07M | Scene, ViewLayer | Sample 0/4000",
            None,  # as the layer ends, after adaptive sampling stopped it at 896
        ),
        (
            "Fra:2 Mem:9.81M (Peak 10.47M) | Time:00:00.47 | Mem:1.13M, Peak:1.13M | "
            "Scene, ViewLayer | Sample 64/64",
            (2, 64, 64),
        ),
        (
            "Fra:3 Mem:8.44M (Peak 8.44M) | Time:00:00.02 | Mem:0.17M, Peak:0.17M | "
            "Scene, ViewLayer | Finished",
            None,
        ),
        # Cycles, in tiles: the samples of every tile count
        (f"{STATUS} | Scene, ViewLayer | Rendered 0/8 Tiles, Sample 1/300", (7, 1, 2400)),
        (f"{STATUS} | Scene, ViewLayer | Rendered 2/8 Tiles, Sample 150/300", (7, 750, 2400)),
        (f"{STATUS} | Scene, ViewLayer | Rendered 1/8 Tiles, Sample 300/300", None),
        (f"{STATUS} | Scene, Second | Rendered 7/8 Tiles, Sample 0/300", None),
        (f"{STATUS} | Scene, Second | Rendered 3/8 Tiles, Sample 1/300", (7, 901, 2400)),
        (
            "Fra:7 Mem:8.41M (Peak 8.58M) | Time:00:03.09 | Mem:0.00M, Peak:0.17M | "
            "Scene | Reading full buffer from disk",
            None,
        ),
        # EEVEE
        (
            "Fra:7 Mem:39.33M (Peak 39.36M) | Time:00:03.18 | Rendering 1 / 64 samples",
            (7, 1, 64),
        ),
        (
            "Fra:7 Mem:39.33M (Peak 39.36M) | Time:00:12.51 | Rendering 25 / 64 samples",
            (7, 25, 64),
        ),
        ("Fra:3 Mem:39.22M (Peak 39.26M) | Time:00:19.50 | Rendering 8 / 8 samples", (3, 8, 8)),
        # not Blender's status
        ("renderfarm-frame: 3 seconds=0.4000 cpu=0.7000 ext=.png", None),
        ("EGL Error (0x3009): EGL_BAD_MATCH: Arguments are inconsistent", None),
        ("Sample 5/10", None),
    ],
)
def test_samples_are_read_from_blenders_status_lines(
    line: str, expected: tuple[int, int, int] | None
) -> None:
    assert frame_samples(line.encode()) == expected
    if expected is not None:
        assert PROGRESS_LINE.match(line.encode())  # and never quoted in a failure


def test_a_frame_in_tiles_never_goes_back() -> None:
    """Cycles prints a tile's last sample before and after it counts the tile."""
    tiles = [
        "Rendered 0/8 Tiles, Sample 0/300",
        "Rendered 0/8 Tiles, Sample 1/300",
        "Rendered 0/8 Tiles, Sample 300/300",
        "Rendered 1/8 Tiles, Sample 300/300",
        "Rendered 1/8 Tiles, Sample 1/300",
        "Rendered 1/8 Tiles, Sample 300/300",
        "Rendered 2/8 Tiles, Sample 300/300",
        "Rendered 2/8 Tiles, Sample 1/300",
        "Rendered 7/8 Tiles, Sample 1/300",
        "Rendered 7/8 Tiles, Sample 300/300",
        "Rendered 7/8 Tiles, Sample 0/300",
    ]
    counts = [frame_samples(f"{STATUS} | Scene, ViewLayer | {t}".encode()) for t in tiles]
    fractions = [done / total for _, done, total in filter(None, counts)]
    assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] < 1


class FakeBoard:
    def __init__(self, failing: bool = False) -> None:
        self.posts: list[tuple[list[tuple[int, int, int]], list[int]]] = []
        self.failing = failing

    def post(
        self, job_id: int, attempt: int, counts: Sequence[FrameProgress], gone: Sequence[int]
    ) -> None:
        assert (job_id, attempt) == (12, 2)
        assert all(c.node == "node-1" and c.attempt == 2 for c in counts)
        if self.failing:
            raise redis.ConnectionError("Redis is away")
        self.posts.append(([(c.frame, c.done, c.total) for c in counts], list(gone)))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counts_go_out_at_most_once_a_second_and_the_last_one_always() -> None:
    board, clock = FakeBoard(), Clock()
    counts = ChunkProgress(board, job_id=12, attempt=2, node="node-1", every=1.0, clock=clock)
    counts.flush()
    assert board.posts == []  # nothing counted yet
    counts.update(1, 10, 400)
    counts.flush()
    assert board.posts == [([(1, 10, 400)], [])]  # the first at once
    for done, at in ((20, 100.3), (30, 100.6), (40, 100.9)):
        clock.now = at
        counts.update(1, done, 400)
        counts.update(2, done // 10, 400)
        counts.flush()
    assert len(board.posts) == 1  # within the second: held back
    clock.now = 101.2
    counts.flush()
    assert board.posts[-1] == ([(1, 40, 400), (2, 4, 400)], [])  # the latest, both at once
    counts.update(1, 50, 400)
    clock.now = 101.5
    counts.flush()
    assert len(board.posts) == 2
    clock.now = 102.3  # the renderer says nothing more for a while: the last still goes
    counts.flush()
    counts.flush()
    assert board.posts[2:] == [([(1, 50, 400)], [])]


def test_a_saved_frame_counts_as_whole_and_the_attempt_clears_its_counts() -> None:
    board, clock = FakeBoard(), Clock()
    counts = ChunkProgress(board, job_id=12, attempt=2, node="node-1", clock=clock)
    counts.update(5, 100, 400)
    counts.flush()
    counts.finish(5)
    counts.update(5, 7, 400)  # a late line of the saved frame
    counts.finish(6)  # never counted: nothing to say
    clock.now += 1.0
    counts.flush()
    assert board.posts == [([(5, 100, 400)], []), ([(5, 400, 400)], [])]
    counts.close()
    assert board.posts[-1] == ([], [5])


def test_a_board_that_fails_costs_the_render_nothing() -> None:
    board, clock = FakeBoard(failing=True), Clock()
    counts = ChunkProgress(board, job_id=12, attempt=2, node="node-1", clock=clock)
    for step in range(3):
        counts.update(1, step + 1, 10)
        clock.now += 1.0
        counts.flush()
    counts.close()  # no exception: the render goes on
    assert board.posts == []


@pytest.mark.parametrize(
    ("text", "fraction"),
    [
        ('{"done":96,"total":400,"node":"n","attempt":1,"at":1.5}', 0.24),
        ('{"done":500,"total":400,"node":"n","attempt":1,"at":1.5}', 1.0),
        ('{"done":1,"total":0,"node":"n","attempt":1,"at":1.5}', 0.0),
        ('{"done":"96","total":400,"node":"n","attempt":1,"at":1.5}', None),
        ('{"done":96,"total":400,"node":"n","at":1.5}', None),
        ("[1, 2]", None),
        ("not json", None),
    ],
)
def test_a_posted_count_is_read_back_or_ignored(text: str, fraction: float | None) -> None:
    count = FrameProgress.from_json(3, text)
    assert (count.fraction if count is not None else None) == fraction


def test_a_status_line_goes_with_its_count_and_older_counts_read_without_one() -> None:
    """A node's status line (an OpenJD task's ``openjd_status``) travels in the count's
    JSON only where there is one: counts posted before status lines read as before."""
    said = FrameProgress(3, 50, 100, "n", 1, 1.5, "halfway")
    assert FrameProgress.from_json(3, said.to_json()) == said
    quiet = FrameProgress(3, 96, 400, "n", 1, 1.5)
    assert "status_line" not in quiet.to_json()
    older = FrameProgress.from_json(3, '{"done":96,"total":400,"node":"n","attempt":1,"at":1.5}')
    assert older == quiet
    wrong = '{"done":1,"total":2,"node":"n","attempt":1,"at":1.5,"status_line":7}'
    assert FrameProgress.from_json(3, wrong) is None


class KeepingBoard:
    """Keeps the counts posted, whole."""

    def __init__(self) -> None:
        self.counts: list[FrameProgress] = []

    def post(
        self, job_id: int, attempt: int, counts: Sequence[FrameProgress], gone: Sequence[int]
    ) -> None:
        self.counts += counts


def test_a_status_line_is_kept_short_and_outlives_its_frames_finish() -> None:
    board = KeepingBoard()
    counts = ChunkProgress(board, job_id=12, attempt=2, node="node-1", clock=Clock())
    counts.update(5, 40, 100, "x" * 1000)
    counts.finish(5)
    counts.flush()
    [count] = board.counts
    assert (count.done, count.status_line) == (100, "x" * STATUS_LINE_MAX)
