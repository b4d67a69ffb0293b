"""A pool's demand for render slots, as an autoscaler should read it (KEDA, in
deploy/kubernetes/): the farm dispatches just in time, so its nodes' Celery queues are
short by design and say nothing of the work waiting; these figures do.

- *now*: slots the pool could fill at once: chunks rendering or sent, and queued chunks
  of jobs not held (not suspended, not waiting for a dependency, a cheaper window or a
  retry's back-off);
- *deadline*: slots the pool needs from now on to finish every job that has a deadline
  on time, at each job's measured pace, held jobs included (a job waiting for a
  greener window must still find the slots when it starts).

An autoscaler takes the larger of the two, in nodes of the pool's slots each.
"""

from __future__ import annotations

import math


def slots_for_deadline(
    frames_left: int, chunks_left: int, frame_seconds: float | None, seconds_left: float
) -> int:
    """Slots a job needs from now to render ``frames_left`` frames (in ``chunks_left``
    chunks) within ``seconds_left``, at ``frame_seconds`` a frame: never more than its
    chunks (a chunk takes one slot); all of them when its pace is not measured yet or
    its deadline has passed."""
    if chunks_left <= 0 or frames_left <= 0:
        return 0
    if frame_seconds is None or seconds_left <= 0:
        return chunks_left
    return min(chunks_left, math.ceil(frames_left * frame_seconds / seconds_left))
