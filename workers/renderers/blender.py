"""Blender on a render node: which Blender this node has, and the command of a chunk.

A node renders with the ``blender`` executable (``renderfarm worker --blender PATH``,
``RENDERFARM_BLENDER``, else ``blender`` on PATH) or, lacking one, with the ``bpy``
module of this Python (``pip install "renderfarm[blender]"``). ``find_blender`` asks
it its version in a child process (``blender --version``, or ``bpy.app.version``), so
``bpy`` is never loaded into the worker; the node advertises ``blender-<major>.<minor>``.

One chunk is one Blender process that loads the scene once and renders the chunk's
frames with the farm's driver (blender_driver.py). The job's settings reach the
driver as one JSON argument, data it looks names up with; nothing of the job becomes
code or a shell word. Scripts inside the scene stay off (``--disable-autoexec``,
``use_scripts=False``) unless the job sets ``allow_scripts``.

The scene is found in the job's folder: its manifest laid out for the attempt
(workers/assets.py), or the storage root for a job without one (a shared mount).

Blender's ``Fra:`` status lines are its progress; ``samples`` reads from them how many
samples of a frame are done (Cycles' ``Sample i/n``, EEVEE's ``Rendering i / n
samples``), which the runner posts for the studio (scheduler/wire/progress.py).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from scheduler.wire.messages import ChunkMessage
from scheduler.wire.renderers import BlenderRenderer

log = logging.getLogger(__name__)

DRIVER = Path(__file__).with_name("blender_driver.py")
VERSION_LINE = re.compile(r"^Blender (\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)
PROGRESS_LINE = re.compile(rb"^Fra:-?\d+ ")
# The status lines that count samples (Blender 4.5, captured in tests/unit/
# test_blender_progress.py): Cycles ends them with "| Scene, ViewLayer | Sample 96/400",
# or "| ... | Rendered 3/8 Tiles, Sample 96/400" for a frame rendered in tiles; EEVEE with
# "| Rendering 25 / 64 samples".
SAMPLES_LINE = re.compile(
    rb"^Fra:(-?\d+) .*\| (?:Rendered (\d+)/(\d+) Tiles, )?"
    rb"(?:Sample (\d+)/(\d+)|Rendering (\d+) / (\d+) samples)"
)
VERSION_TIMEOUT = 60.0
NO_BLENDER = (
    "no Blender on this node: give the worker --blender PATH, put blender on its PATH, "
    'or pip install "renderfarm[blender]"'
)
_BPY_VERSION = "import bpy; print('Blender %d.%d.%d' % tuple(bpy.app.version))"


class BlenderUnavailable(Exception):
    """The Blender the node was told to use does not run; ``str`` says why."""


@dataclass(frozen=True, slots=True)
class Blender:
    """A Blender this node can run."""

    executable: str | None  # None: the bpy module, under this node's Python
    version: tuple[int, int, int]

    @property
    def tag(self) -> str:
        """The tag a job requires to render with this Blender's major.minor version."""
        return f"blender-{self.version[0]}.{self.version[1]}"

    def describe(self) -> str:
        release = ".".join(str(part) for part in self.version)
        return f"Blender {release} ({self.executable or f'bpy module of {sys.executable}'})"


def find_blender(executable: str | None = None) -> Blender | None:
    """The Blender to render with: ``executable`` if given (``BlenderUnavailable`` if it
    does not run), else ``blender`` on PATH, else the bpy module; None if none is there."""
    if executable:
        found = shutil.which(executable)
        if found is None:
            raise BlenderUnavailable(f"no executable {executable}")
        return Blender(found, _version_of([found, "--factory-startup", "-b", "--version"]))
    on_path = shutil.which("blender")
    if on_path is not None:
        try:
            return Blender(on_path, _version_of([on_path, "--factory-startup", "-b", "--version"]))
        except BlenderUnavailable as error:
            log.warning("ignoring blender on PATH: %s", error)
    try:
        return Blender(None, _version_of([sys.executable, "-c", _BPY_VERSION]))
    except BlenderUnavailable:
        return None


def _version_of(argv: list[str]) -> tuple[int, int, int]:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=VERSION_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BlenderUnavailable(f"{argv[0]} does not run: {error}") from None
    match = VERSION_LINE.search(done.stdout)
    if done.returncode != 0 or match is None:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise BlenderUnavailable(f"{argv[0]} gave no Blender version: {last[0]}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def frame_samples(line: bytes) -> tuple[int, int, int] | None:
    """(frame, samples done, samples in all) of a line of Blender's output, or None.

    Counts are of the view layer being rendered: a scene of several layers counts
    each layer's samples anew. A frame rendered in tiles counts the samples of all its
    tiles. Lines that say nothing new give None: a count of 0 (Cycles prints it as a
    layer starts and again as it ends) and a tile's last sample (Cycles prints it
    before and after it counts the tile as rendered).
    """
    match = SAMPLES_LINE.match(line)
    if match is None:
        return None
    frame, rendered, tiles, cycles_done, cycles_total, eevee_done, eevee_total = match.groups()
    done, total = int(cycles_done or eevee_done), int(cycles_total or eevee_total)
    if not 0 < done <= total:
        return None
    if tiles is None:
        return int(frame), done, total
    if done == total:
        return None
    return int(frame), int(rendered) * total + done, int(tiles) * total


_UNSET: Any = object()


class BlenderCommand:
    """The ``blender`` renderer: one Blender process per chunk, driven by blender_driver.py."""

    model = BlenderRenderer
    writes_frames = True
    progress: re.Pattern[bytes] | None = PROGRESS_LINE

    def __init__(self) -> None:
        self._blender: Blender | None = _UNSET

    def samples(self, line: bytes) -> tuple[int, int, int] | None:
        """How far a frame is, from a line of output (``frame_samples``): the runner
        posts it for the API and the studio's ``renderfarm watch``."""
        return frame_samples(line)

    def use(self, blender: Blender | None) -> None:
        """Render with ``blender`` (the node's, found at start); None: this node has none."""
        self._blender = blender

    @property
    def blender(self) -> Blender | None:
        """The node's Blender; found on first use unless the node said which."""
        if self._blender is _UNSET:
            self._blender = find_blender()
        return self._blender

    def argv(self, message: ChunkMessage, storage: Path, files: Path | None = None) -> list[str]:
        settings = self.model.model_validate({**message.settings, "kind": message.renderer})
        blender = self.blender
        if blender is None:
            raise LookupError(NO_BLENDER)
        scene = (files or storage) / settings.scene
        output = storage / PurePosixPath(message.output_pattern).with_suffix("")
        request = {
            "scene": str(scene),
            "scene_in_job": settings.scene,
            "open": blender.executable is None,
            "frames": list(message.frames),
            "output": str(output),
            "overrides": settings.overrides,
            "allow_scripts": settings.allow_scripts,
        }
        data = json.dumps(request, separators=(",", ":"))
        if blender.executable is None:
            return [sys.executable, "-P", str(DRIVER), data]
        scripts = "--enable-autoexec" if settings.allow_scripts else "--disable-autoexec"
        return [
            blender.executable,
            "-b",
            "--python-exit-code",
            "1",
            scripts,
            str(scene),  # absolute: never read as an option
            "--python",
            str(DRIVER),
            "--",
            data,
        ]
