"""Chunking: the frames of a job cut into units of dispatch.

A chunk is at most ``chunk_size`` frames that are consecutive in the job's ascending
frame list *and* evenly spaced, so one renderer command can render it
(``blender -s START -e END -j STEP``). A gap in the spacing starts a new chunk even
if the current one is not full. Pure: standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.core.frames import FrameRange


def plan_chunks(frames: Sequence[int], chunk_size: int) -> list[FrameRange]:
    """Cut ascending, distinct ``frames`` into chunks of at most ``chunk_size`` frames."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    chunks: list[FrameRange] = []
    i = 0
    n = len(frames)
    while i < n:
        start = frames[i]
        if chunk_size == 1 or i + 1 == n:
            chunks.append(FrameRange(start, start))
            i += 1
            continue
        step = frames[i + 1] - start
        j = i + 1
        while j + 1 < n and j + 1 - i < chunk_size and frames[j + 1] - frames[j] == step:
            j += 1
        chunks.append(FrameRange(start, frames[j], step))
        i = j + 1
    return chunks
