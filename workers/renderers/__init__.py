"""This node's implementations of the renderers in scheduler/wire/renderers.py, by kind.

Each implementation names the settings model it renders (``model``), so the kinds a
node has come from the registry's models, and it reads a chunk's settings with that
model: defaults and ranges are the ones the API checked. A kind this node lacks is
refused with ``unknown_renderer``, the words the API uses for a kind it does not know.

Two shapes:

- a *process* renderer builds a command line; the runner starts it in its own process
  group with a time limit, logs its output, and reads ``renderfarm-frame: N`` lines to
  report frames as they finish (``builtin``, ``blender``). Its
  ``progress`` pattern tells the runner which lines are progress, not news worth
  quoting when the renderer fails; ``files`` is the job's folder (its manifest laid
  out for this attempt by workers/assets.py), the storage root for jobs without one;
  ``argv`` raises ``LookupError`` when this node lacks what the renderer needs (no
  Blender), ``ValueError`` for settings it refuses;
- an *in-process* renderer renders inside the worker (``noop``, for benchmarks: there
  is nothing to isolate and a process start would dominate the measurement);
- a *session* renderer (``openjd``) gives the runner an openjd-sessions Session, which
  starts the template's actions itself, and the chunk's tasks to run in it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Protocol

from scheduler.wire.messages import ChunkMessage, FrameReport
from scheduler.wire.renderers import (
    RENDERERS,
    BuiltinRenderer,
    RendererSettings,
    kind_of,
    unknown_renderer,
)
from workers.renderers.blender import BlenderCommand
from workers.renderers.noop import NoopRender
from workers.renderers.openjd import OpenJdSessions


class ProcessRenderer(Protocol):
    @property
    def model(self) -> type[RendererSettings]: ...

    writes_frames: bool
    progress: re.Pattern[bytes] | None

    def argv(
        self, message: ChunkMessage, storage: Path, files: Path | None = None
    ) -> list[str]: ...


class InProcessRenderer(Protocol):
    @property
    def model(self) -> type[RendererSettings]: ...

    def render(self, message: ChunkMessage, storage: Path) -> list[FrameReport]: ...


class BuiltinCommand:
    """The numpy ray tracer in ``workers.renderers.builtin``, as a child process."""

    model = BuiltinRenderer
    writes_frames = True
    progress: re.Pattern[bytes] | None = None

    def argv(self, message: ChunkMessage, storage: Path, files: Path | None = None) -> list[str]:
        settings = self.model.model_validate({**message.settings, "kind": message.renderer})
        return [
            sys.executable,
            "-m",
            "workers.renderers.builtin",
            "--out",
            str(storage / message.output_pattern),
            "--frames",
            ",".join(str(frame) for frame in message.frames),
            "--width",
            str(settings.width),
            "--height",
            str(settings.height),
            "--samples",
            str(settings.samples),
        ]


BLENDER = BlenderCommand()  # the node tells it which Blender it found (workers/node.py)
IMPLEMENTATIONS: dict[str, ProcessRenderer | InProcessRenderer | OpenJdSessions] = {
    kind_of(renderer.model): renderer
    for renderer in (BuiltinCommand(), NoopRender(), BLENDER, OpenJdSessions())
}


def renderer_for(kind: str) -> ProcessRenderer | InProcessRenderer | OpenJdSessions:
    """This node's renderer of ``kind``; ``LookupError`` in the API's words if it has none."""
    try:
        return IMPLEMENTATIONS[kind]
    except KeyError:
        # the kinds a studio may name: openjd comes from templates, never by name
        named = [known for known in IMPLEMENTATIONS if known in RENDERERS]
        raise LookupError(unknown_renderer(kind, named)) from None
