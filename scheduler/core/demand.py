"""A pool's demand for render slots, as an autoscaler should read it (KEDA, in
deploy/kubernetes/): the farm dispatches just in time, so its nodes' Celery queues are
short by design and say nothing of the work waiting; these figures do.

- *now* (what KEDA scales on): slots the pool could fill at once: chunks rendering or
  sent, and queued chunks of runnable jobs (not suspended, waiting for no other job,
  past any retry's back-off). Read from the jobs' states, never from the reasons a
  dispatch wrote on held jobs: a pool scaled to none has no dispatch to clear them.
  A job the placement holds for a cheaper or greener window counts (that hold lives in
  the scheduler), as does one no node yet matches (new nodes may);
- *deadline*: slots the pool needs from now on to finish its runnable jobs that have
  deadlines on time, at each job's measured pace: never more than *now*; above the
  pool's most nodes, deadlines will be missed (an alert, and the dashboard, say so).
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
