"""Frame specs: the documented grammar, its normalisation, its errors, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.frames import (
    FrameRange,
    FrameSpecError,
    format_frame_spec,
    parse_frame_runs,
    parse_frame_spec,
)

CASES = [
    ("1-5", [1, 2, 3, 4, 5]),
    ("7", [7]),
    ("1,5,9", [1, 5, 9]),
    ("1-10x3", [1, 4, 7, 10]),
    ("1-100x2,150", [*range(1, 101, 2), 150]),
    ("1-10:2", [1, 3, 5, 7, 9]),  # OpenJD step
    ("10-1", list(range(1, 11))),  # reversed range: the same set
    ("10-1:-3", [1, 4, 7, 10]),  # OpenJD negative step walks down from 10
    ("10-1x3", [1, 4, 7, 10]),
    ("1-5,3,4-6", [1, 2, 3, 4, 5, 6]),  # duplicates collapse
    ("-3--1", [-3, -2, -1]),  # negative frames, as Blender allows
    ("-2-2", [-2, -1, 0, 1, 2]),
    (" 1 - 3 , 8 ", [1, 2, 3, 8]),
]


@pytest.mark.parametrize(("spec", "frames"), CASES)
def test_parse_frame_spec(spec: str, frames: list[int]) -> None:
    assert parse_frame_spec(spec) == frames


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("1,,2", "two commas"),
        ("1-", "cannot read"),
        ("a-b", "cannot read"),
        ("1-10x0", "must not be 0"),
        ("1-10:0", "must not be 0"),
        ("1-10x-2", "positive"),
        ("1.5", "cannot read"),
        ("1-2-3", "cannot read"),
    ],
)
def test_malformed_specs_say_what_is_wrong(spec: str, complaint: str) -> None:
    with pytest.raises(FrameSpecError, match=complaint):
        parse_frame_spec(spec)


def test_huge_ranges_are_refused_before_expansion() -> None:
    with pytest.raises(FrameSpecError, match="more than 1000 frames"):
        parse_frame_spec("1-1000000000000", max_frames=1000)
    with pytest.raises(FrameSpecError, match="more than 10 frames"):
        parse_frame_spec("1-6,20-25", max_frames=10)
    assert len(parse_frame_spec("1-1000", max_frames=1000)) == 1000


@pytest.mark.parametrize(
    ("frames", "spec"),
    [([1, 2, 3], "1-3"), ([1, 3, 5, 150], "1-5x2,150"), ([4], "4"), ([3, 1, 2, 2], "1-3")],
)
def test_format_frame_spec(frames: list[int], spec: str) -> None:
    assert format_frame_spec(frames) == spec


@given(st.sets(st.integers(min_value=-500, max_value=5000), min_size=1, max_size=300))
def test_format_then_parse_is_identity(frames: set[int]) -> None:
    assert parse_frame_spec(format_frame_spec(frames)) == sorted(frames)


@given(
    st.lists(
        st.tuples(
            st.integers(-100, 1000), st.integers(-100, 1000), st.integers(1, 7), st.booleans()
        ),
        min_size=1,
        max_size=8,
    )
)
def test_parse_matches_a_reference_reading(items: list[tuple[int, int, int, bool]]) -> None:
    text = ",".join(f"{a}-{b}{'x' if deadline else ':'}{step}" for a, b, step, deadline in items)
    expected: set[int] = set()
    for a, b, step, _ in items:
        walk = step if b >= a else -step
        expected.update(range(a, b + (1 if walk > 0 else -1), walk))
    assert parse_frame_spec(text) == sorted(expected)


@given(
    st.lists(
        st.tuples(st.integers(-100, 1000), st.integers(-100, 1000), st.integers(1, 7)),
        min_size=1,
        max_size=8,
    )
)
def test_runs_name_the_frames_of_the_spec(items: list[tuple[int, int, int]]) -> None:
    """The runs a submission stores (without expanding the spec) are its frames, in order."""
    text = ",".join(f"{a}-{b}:{step}" for a, b, step in items)
    runs = parse_frame_runs(text)
    assert [frame for run in runs for frame in run] == parse_frame_spec(text)
    assert parse_frame_spec(",".join(map(str, runs))) == parse_frame_spec(text)


def test_a_long_range_is_read_as_one_run() -> None:
    assert parse_frame_runs("1-1000000") == [FrameRange(1, 1_000_000)]
    assert parse_frame_runs("1-5,6-10,12-20x2,100") == [
        FrameRange(1, 10),
        FrameRange(12, 20, 2),
        FrameRange(100, 100),
    ]
    with pytest.raises(FrameSpecError, match="more than 10"):
        parse_frame_runs("1-6,20-25", max_frames=10)


def test_a_range_picks_its_own_among_sorted_frames() -> None:
    assert FrameRange(3, 11, 2).among([1, 2, 3, 4, 5, 9, 11, 12]) == [3, 5, 9, 11]
    assert FrameRange(5, 5).among([1, 2, 3]) == []


@pytest.mark.parametrize("limit", [None, 1_000_000])
def test_a_range_past_what_len_can_count_is_refused_not_crashed(limit: int | None) -> None:
    with pytest.raises(FrameSpecError):
        parse_frame_spec("1-99999999999999999999", limit)
