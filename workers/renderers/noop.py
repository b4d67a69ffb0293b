"""The ``noop`` renderer: renders nothing, optionally sleeping per frame (benchmarks)."""

from __future__ import annotations

import time
from pathlib import Path

from scheduler.wire.messages import ChunkMessage, FrameReport
from scheduler.wire.renderers import NoopRenderer


class NoopRender:
    model = NoopRenderer

    def render(self, message: ChunkMessage, storage: Path) -> list[FrameReport]:
        settings = self.model.model_validate({**message.settings, "kind": message.renderer})
        reports = []
        for frame in message.frames:
            wall, cpu = time.perf_counter(), time.process_time()
            if settings.sleep:
                time.sleep(settings.sleep)
            reports.append(
                FrameReport(
                    frame=frame,
                    output=None,
                    render_seconds=time.perf_counter() - wall,
                    cpu_seconds=time.process_time() - cpu,
                )
            )
        return reports
