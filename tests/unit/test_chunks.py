"""Chunking: every frame in exactly one chunk, in order, evenly spaced, never too big."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.chunks import plan_chunks
from scheduler.core.frames import FrameRange, parse_frame_spec


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
