"""Chunking: the frames of a job cut into units of dispatch.

A chunk is at most ``chunk_size`` frames that are consecutive in the job's ascending
frame list *and* evenly spaced, so one renderer command can render it
(``blender -s START -e END -j STEP``): the job's frames are split into arithmetic runs
(``scheduler.core.frames``), and each run is cut into chunks of ``chunk_size`` frames,
the last one of a run possibly shorter.

A job of a million frames has a million chunks, but no need to hold them at once: a
**block** stands for the chunks of a run that are not cut yet (a frame range and how
many chunks it holds), and the scheduler cuts chunks off its front as it dispatches
them (``cut``). So a job is stored as a few rows whatever its size (``plan_rows``),
and its positions (the order of its chunks) are those of the whole plan: a block at
position p holds the chunks p, p+1, ... Pure: standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scheduler.core.frames import FrameRange, runs_of


@dataclass(frozen=True, slots=True)
class PlannedRow:
    """A row of a job's chunk table: one chunk (``chunks`` 1), or a block of ``chunks``
    chunks of ``chunk_size`` frames cut from ``frames`` in order, at ``position``."""

    position: int
    frames: FrameRange
    chunks: int


def chunks_in(run: FrameRange, chunk_size: int) -> int:
    """How many chunks a run is cut into."""
    return -(-len(run) // chunk_size)


def cut(run: FrameRange, chunk_size: int, count: int) -> tuple[list[FrameRange], FrameRange | None]:
    """The first ``count`` chunks of ``run`` (fewer if it has fewer), and what is left of
    it (None when nothing is)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    pieces = []
    start = run.start
    for _ in range(count):
        if start > run.end:
            break
        end = min(start + (chunk_size - 1) * run.step, run.end)
        pieces.append(FrameRange(start, end, run.step if end > start else 1))
        start = end + run.step
    if start > run.end:
        return pieces, None
    return pieces, FrameRange(start, run.end, run.step if run.end > start else 1)


def plan_rows(runs: Iterable[FrameRange], chunk_size: int, cut_first: int) -> list[PlannedRow]:
    """A job's chunk rows for its frames' runs: its first ``cut_first`` chunks each a row
    of its own, and each run's remaining chunks one block row."""
    rows: list[PlannedRow] = []
    position = 0
    for run in runs:
        pieces, rest = cut(run, chunk_size, max(0, cut_first - position))
        for piece in pieces:
            rows.append(PlannedRow(position, piece, 1))
            position += 1
        if rest is not None:
            count = chunks_in(rest, chunk_size)
            rows.append(PlannedRow(position, rest, count))
            position += count
    return rows


def plan_chunks(frames: Sequence[int], chunk_size: int) -> list[FrameRange]:
    """Cut ascending, distinct ``frames`` into chunks of at most ``chunk_size`` frames."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    return [chunk for run in runs_of(frames) for chunk in cut(run, chunk_size, len(run))[0]]
