"""The ``noop`` renderer: renders nothing, optionally sleeping per frame (benchmarks)."""

from __future__ import annotations

import time
from pathlib import Path

from scheduler.wire.messages import ChunkMessage, FrameReport


class NoopRenderer:
    def render(self, message: ChunkMessage, storage: Path) -> list[FrameReport]:
        pause = float(message.settings.get("sleep", 0.0))
        reports = []
        for frame in message.frames:
            wall, cpu = time.perf_counter(), time.process_time()
            if pause:
                time.sleep(pause)
            reports.append(
                FrameReport(
                    frame=frame,
                    output=None,
                    render_seconds=time.perf_counter() - wall,
                    cpu_seconds=time.process_time() - cpu,
                )
            )
        return reports
