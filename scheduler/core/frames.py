"""Frame specs: the text a studio writes for "which frames", and back.

Grammar (comma-separated items, spaces ignored)::

    item  := int | int "-" int [step]
    step  := "x" int  (Deadline style: 1-100x2)
           | ":" int  (OpenJD style: 1-100:2, negative steps allowed: 10-1:-1)
    int   := ["-"] digits   (negative frames are legal, as in Blender)

A spec names a *set* of frames. Documented normalisation:

- a reversed range ``10-1`` is the same set as ``1-10`` (with a step, the set is the
  one walked from the first number towards the second: ``10-1x3`` is {10, 7, 4, 1});
- duplicates collapse (``1-5,3`` is five frames);
- frames render in ascending order.

Sizes are computed before anything is expanded, so ``1-1000000000`` is refused by
``max_frames`` without building a list. A frame number and a step are within
``FRAME_MIN``..``FRAME_MAX`` (scheduler/core/bounds.py), their digits counted before
they are read, so that a number of thousands of digits is a FrameSpecError, not a
ValueError of Python's own, and every frame fits the frames' columns.
Pure: standard library only.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from scheduler.core.bounds import FRAME_DIGITS, FRAME_MAX, FRAME_MIN

_ITEM = re.compile(r"^(-?[0-9]+)(?:-(-?[0-9]+)(?:([x:])(-?[0-9]+))?)?$")  # ASCII digits only


class FrameSpecError(ValueError):
    """The frame spec is malformed, empty or too large; the message says which."""


@dataclass(frozen=True, slots=True)
class FrameRange:
    """An arithmetic run of frames, ``start`` to ``end`` inclusive, ``step`` > 0."""

    start: int
    end: int
    step: int = 1

    def __post_init__(self) -> None:
        if self.step <= 0 or self.end < self.start or (self.end - self.start) % self.step:
            raise ValueError(f"not a normalised range: {self}")

    def __len__(self) -> int:
        return (self.end - self.start) // self.step + 1

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(self.start, self.end + 1, self.step))

    def frames(self) -> list[int]:
        return list(self)

    def within(self, low: int, high: int) -> range:
        """The frames from ``low`` to ``high``, without walking the others."""
        start = self.start if low <= self.start else low + (self.start - low) % self.step
        return range(start, min(self.end, high) + 1, self.step)

    def among(self, ordered: Sequence[int]) -> list[int]:
        """Which of the (ascending) frames are this range's, found by bisection: the cost
        is the frames asked for within its bounds, not its length."""
        inside = ordered[
            bisect.bisect_left(ordered, self.start) : bisect.bisect_right(ordered, self.end)
        ]
        return [f for f in inside if (f - self.start) % self.step == 0]

    def __str__(self) -> str:
        if self.start == self.end:
            return str(self.start)
        if self.step == 1:
            return f"{self.start}-{self.end}"
        return f"{self.start}-{self.end}x{self.step}"


def _number(text: str, item: str) -> int:
    """A frame number or a step, its digits counted before it is read: a range far past
    the bounds is still told to be too many frames (the size is checked first)."""
    if len(text.lstrip("-")) > 2 * FRAME_DIGITS:
        _out_of_range(item)
    return int(text)


def _out_of_range(item: str) -> None:
    raise FrameSpecError(
        f"{item[:40]!r}{'...' if len(item) > 40 else ''} is out of range: "
        f"frames and steps are from {FRAME_MIN} to {FRAME_MAX}"
    )


def _parse_item(text: str) -> range:
    match = _ITEM.match(text)
    if match is None:
        raise FrameSpecError(
            f"cannot read {text[:40]!r}: expected a frame (7), a range (1-240) "
            "or a range with a step (1-100x2, 1-100:2)"
        )
    first = _number(match.group(1), text)
    if match.group(2) is None:
        return range(first, first + 1)
    second = _number(match.group(2), text)
    step = _number(match.group(4), text) if match.group(4) is not None else 1
    if step == 0:
        raise FrameSpecError(f"{text!r}: the step must not be 0")
    if match.group(3) == "x" and step < 0:
        raise FrameSpecError(f"{text!r}: an 'x' step must be positive; use ':' for OpenJD steps")
    # Walk from the first number towards the second whatever the sign of the step.
    walk = abs(step) if second >= first else -abs(step)
    return range(first, second + (1 if walk > 0 else -1), walk)


def parse_frame_spec(spec: str, max_frames: int | None = None) -> list[int]:
    """The sorted, distinct frames a spec names.

    Raises FrameSpecError for malformed text, an empty spec, or more than
    ``max_frames`` frames (checked before any list is built).
    """
    ranges = _parse_items(spec, max_frames)
    if len(ranges) == 1:
        return list(_ascending(ranges[0]))
    return sorted({frame for run in ranges for frame in run})


def _parse_items(spec: str, max_frames: int | None) -> list[range]:
    """The spec's items as ranges, checked: well formed, in bounds, and together (counted
    with their overlaps) at most ``max_frames`` frames."""
    items = [part.replace(" ", "") for part in spec.split(",")]
    if not any(items):
        raise FrameSpecError("the frame spec is empty")
    ranges = []
    upper_bound = 0
    for item in items:
        if not item:
            raise FrameSpecError(f"empty item in {spec!r} (two commas in a row?)")
        run = _parse_item(item)
        # counted by arithmetic: len() of a range past the bounds may not fit a C size
        upper_bound += max(0, -(-(run.stop - run.start) // run.step))
        if max_frames is not None and upper_bound > max_frames:
            raise FrameSpecError(
                f"{spec!r} names more than {max_frames} frames, the most one job may have"
            )
        if not (min(run[0], run[-1]) >= FRAME_MIN and max(run[0], run[-1]) <= FRAME_MAX):
            _out_of_range(item)
        if not FRAME_MIN <= run.step <= FRAME_MAX:
            _out_of_range(item)
        ranges.append(run)
    return ranges


def parse_frame_runs(spec: str, max_frames: int | None = None) -> list[FrameRange]:
    """The frames a spec names, as ascending arithmetic runs, without building a list of
    them where the items do not overlap (``1-1000000`` is one run, read in microseconds);
    items that overlap are expanded and merged (their count is bounded by ``max_frames``).

    The same set as ``parse_frame_spec``; the runs are the items as written, ordered, with
    touching items of one step joined (``1-5,6-10`` is ``1-10``), or, where items
    overlap, ``runs_of`` the merged frames.
    """
    ranges = sorted(
        (_ascending(run) for run in _parse_items(spec, max_frames)), key=lambda run: run[0]
    )
    if any(later[0] <= earlier[-1] for earlier, later in pairwise(ranges)):
        return runs_of(sorted({frame for run in ranges for frame in run}))
    runs: list[FrameRange] = []
    for run in ranges:
        last = runs[-1] if runs else None
        if last is not None and _joins(last, run):
            step = run[0] - last.end if len(last) == 1 else last.step
            runs[-1] = FrameRange(last.start, run[-1], step)
        else:
            runs.append(FrameRange(run[0], run[-1], run.step if len(run) > 1 else 1))
    return runs


def _joins(run: FrameRange, after: range) -> bool:
    """Whether the items ``after`` continues ``run`` with one step all along."""
    gap = after[0] - run.end
    step = gap if len(run) == 1 else run.step
    return gap == step and (len(after) == 1 or after.step == step)


def _ascending(run: range) -> range:
    return run if run.step > 0 else run[::-1]


def runs_of(frames: Sequence[int]) -> list[FrameRange]:
    """Split ascending frames into maximal arithmetic runs, greedily from the left."""
    runs: list[FrameRange] = []
    i = 0
    while i < len(frames):
        start = frames[i]
        if i + 1 == len(frames):
            runs.append(FrameRange(start, start))
            break
        step = frames[i + 1] - start
        j = i + 1
        while j + 1 < len(frames) and frames[j + 1] - frames[j] == step:
            j += 1
        if j == i + 1 and step != 1 and j + 1 < len(frames):
            # A lone pair with an odd gap: keep the first frame alone so the
            # second can start a longer run with its right neighbour.
            runs.append(FrameRange(start, start))
            i += 1
            continue
        runs.append(FrameRange(start, frames[j], step))
        i = j + 1
    return runs


def format_frame_spec(frames: Iterable[int]) -> str:
    """The shortest-ish spec for a set of frames; ``parse_frame_spec`` inverts it."""
    ordered = sorted(set(frames))
    if not ordered:
        raise FrameSpecError("no frames to format")
    return ",".join(str(run) for run in runs_of(ordered))
