"""How many slots a job with a deadline needs (scheduler/core/demand.py)."""

from __future__ import annotations

import pytest

from scheduler.core.demand import slots_for_deadline


@pytest.mark.parametrize(
    ("frames", "chunks", "seconds", "left", "slots"),
    [
        (100, 100, 60.0, 3600.0, 2),  # 6,000 s of frames in an hour: 2 slots (1.67 up)
        (100, 100, 60.0, 6000.0, 1),
        (100, 10, 60.0, 60.0, 10),  # no more slots than chunks: a chunk takes one
        (100, 100, None, 3600.0, 100),  # not measured yet: all it could use
        (100, 100, 60.0, 0.0, 100),  # its deadline is now
        (100, 100, 60.0, -50.0, 100),  # or passed
        (0, 0, 60.0, 3600.0, 0),
        (5, 1, 0.0, 3600.0, 0),  # frames that take no time need no slot
    ],
)
def test_a_job_needs_the_slots_that_finish_it_by_its_deadline(
    frames: int, chunks: int, seconds: float | None, left: float, slots: int
) -> None:
    assert slots_for_deadline(frames, chunks, seconds, left) == slots
