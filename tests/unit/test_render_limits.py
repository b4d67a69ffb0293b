"""When the node's runner kills a render: per-frame time limits and stalls."""

from __future__ import annotations

import pytest

from scheduler.wire.messages import ChunkMessage
from workers.runner import limit_breached


def message(timeout: float, stall: float | None = None, frames: int = 4) -> ChunkMessage:
    return ChunkMessage(
        chunk_id=1, attempt=1, job_id=1, pool="cpu", frames=list(range(1, frames + 1)),
        renderer="builtin", settings={}, output_pattern="f_{frame}.png", log_path="a.log",
        timeout=timeout, stall_timeout=stall,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("now", "last_mark", "marked", "last_output", "stall", "breach"),
    [
        (39.0, 0.0, 0, 39.0, None, None),  # 4 frames x 10 s, no frame reported yet
        (41.0, 0.0, 0, 41.0, None, "40 s for 4 frame(s)"),
        (25.0, 18.0, 2, 25.0, None, None),  # two frames done, the third is 7 s in
        (29.0, 18.0, 2, 29.0, None, "a frame took longer than the limit of 10 s"),
        (5.0, 0.0, 0, 1.0, 3.0, "stalled: no output for 3 s"),
        (5.0, 0.0, 0, 3.0, 3.0, None),
    ],
)
def test_limit_breached(
    now: float,
    last_mark: float,
    marked: int,
    last_output: float,
    stall: float | None,
    breach: str | None,
) -> None:
    found = limit_breached(message(10.0, stall), now, 0.0, last_mark, marked, last_output)
    if breach is None:
        assert found is None
    else:
        assert found is not None and breach in found
