"""Renderers a node can run, by the name a job gives in ``renderer.kind``.

Two shapes:

- a *process* renderer builds a command line; the runner starts it in its own process
  group with a time limit, logs its output, and reads ``renderfarm-frame: N`` lines to
  report frames as they finish (``builtin``; Blender and OpenJD come later);
- an *in-process* renderer renders inside the worker (``noop``, for benchmarks: there
  is nothing to isolate and a process start would dominate the measurement).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

from scheduler.wire.messages import ChunkMessage, FrameReport
from workers.renderers.noop import NoopRenderer


class ProcessRenderer(Protocol):
    writes_frames: bool

    def argv(self, message: ChunkMessage, storage: Path) -> list[str]: ...


class InProcessRenderer(Protocol):
    def render(self, message: ChunkMessage, storage: Path) -> list[FrameReport]: ...


class BuiltinRenderer:
    """The numpy ray tracer in ``workers.renderers.builtin``."""

    writes_frames = True

    def argv(self, message: ChunkMessage, storage: Path) -> list[str]:
        settings = message.settings
        return [
            sys.executable,
            "-m",
            "workers.renderers.builtin",
            "--out",
            str(storage / message.output_pattern),
            "--frames",
            ",".join(str(frame) for frame in message.frames),
            "--width",
            str(int(settings.get("width", 320))),
            "--height",
            str(int(settings.get("height", 180))),
            "--samples",
            str(int(settings.get("samples", 1))),
        ]


RENDERERS: dict[str, ProcessRenderer | InProcessRenderer] = {
    "builtin": BuiltinRenderer(),
    "noop": NoopRenderer(),
}


def renderer_for(kind: str) -> ProcessRenderer | InProcessRenderer:
    try:
        return RENDERERS[kind]
    except KeyError:
        raise LookupError(f"this node has no renderer {kind!r}") from None
