"""Chunking: every frame in exactly one chunk, in order, evenly spaced, never too big."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.chunks import PlannedRow, cut, plan_chunks, plan_rows
from scheduler.core.frames import FrameRange, parse_frame_runs, parse_frame_spec, runs_of


@pytest.mark.parametrize(
    ("spec", "size", "chunks"),
    [
        ("1-6", 1, ["1", "2", "3", "4", "5", "6"]),
        ("1-6", 4, ["1-4", "5-6"]),
        ("1-10", 5, ["1-5", "6-10"]),
        ("1-3,10-11", 3, ["1-3", "10-11"]),  # a gap starts a new chunk
        ("1-100x2,150", 25, ["1-49x2", "51-99x2", "150"]),
        ("1,2,3,7", 10, ["1-3", "7"]),
        ("5", 3, ["5"]),
    ],
)
def test_plan_chunks(spec: str, size: int, chunks: list[str]) -> None:
    assert [str(c) for c in plan_chunks(parse_frame_spec(spec), size)] == chunks


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_chunks([1, 2], 0)


@given(
    st.sets(st.integers(min_value=-50, max_value=400), min_size=1, max_size=200),
    st.integers(min_value=1, max_value=30),
)
def test_chunks_cover_the_frames_exactly(frames: set[int], size: int) -> None:
    ordered = sorted(frames)
    chunks = plan_chunks(ordered, size)
    flattened = [frame for chunk in chunks for frame in chunk]
    assert flattened == ordered
    assert all(1 <= len(chunk) <= size for chunk in chunks)
    assert all(isinstance(chunk, FrameRange) and chunk.step >= 1 for chunk in chunks)


def _expanded(rows: list[PlannedRow], size: int) -> list[FrameRange]:
    """The chunks the rows stand for, blocks cut as the scheduler cuts them."""
    chunks = []
    for row in rows:
        pieces, rest = cut(row.frames, size, row.chunks)
        assert rest is None and len(pieces) == row.chunks
        chunks.extend(pieces)
    return chunks


@given(
    st.sets(st.integers(min_value=-50, max_value=400), min_size=1, max_size=200),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=0, max_value=40),
)
def test_blocks_stand_for_the_chunks_they_replace(frames: set[int], size: int, first: int) -> None:
    ordered = sorted(frames)
    rows = plan_rows(runs_of(ordered), size, first)
    assert _expanded(rows, size) == plan_chunks(ordered, size)
    # positions are those of the whole plan, and the first chunks are rows of their own
    assert [row.position for row in rows] == [
        sum(r.chunks for r in rows[:i]) for i in range(len(rows))
    ]
    assert all(row.chunks == 1 for row in rows if row.position < first)


def test_a_million_frames_are_two_rows() -> None:
    rows = plan_rows(parse_frame_runs("1-1000000"), 1, 1)
    assert rows == [
        PlannedRow(0, FrameRange(1, 1), 1),
        PlannedRow(1, FrameRange(2, 1_000_000), 999_999),
    ]


def test_cutting_a_block_leaves_the_rest() -> None:
    pieces, rest = cut(FrameRange(1, 99, 2), 10, 2)
    assert [str(p) for p in pieces] == ["1-19x2", "21-39x2"]
    assert rest == FrameRange(41, 99, 2)
    assert cut(FrameRange(5, 5), 3, 4) == ([FrameRange(5, 5)], None)
