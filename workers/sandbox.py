"""A sandbox for renderer processes on Linux nodes: bubblewrap (``bwrap``).

``RENDERFARM_SANDBOX`` (``renderfarm worker --sandbox``) decides, once, as the node
starts (``find_sandbox``): ``bwrap`` requires it (``SandboxUnavailable`` if it does
not run here), ``auto`` uses it where it runs and else warns once and renders
without, ``off`` renders without. The runner then starts each renderer through
``SANDBOX.wrap``, where the renderer:

- sees the node's filesystem read-only, less the node's own files, which are not
  there at all: its cache root (the blobs of every studio), its data folder (the
  embedded farm's database), a ``.env`` beside the worker (its node token), ``/run``
  (the host's daemons' sockets), the node user's home folder (or, where renderers run
  from inside it, its credentials: ``~/.aws``, ``~/.ssh``...) and the credential files
  the node's environment names; and for a job with its own files the storage root,
  for one without, the storage's contents, manifests, uploads and other jobs' folders;
- reads the job's files (the attempt's folder) and writes only to the job's frames
  folder and a private, empty ``/tmp``. The attempt's folder is read-only: it holds
  hard links to the node's cache, shared by the studios, whose files a renderer
  running as their owner could otherwise make writable again and rewrite;
- has no network (``--unshare-net``: no farm Redis, no API), its own PID namespace
  and /proc (no other process's environment), no capabilities (``--cap-drop ALL``:
  a root node's renderer cannot remount or override file modes), and dies with the
  node (``--die-with-parent``);
- keeps the GPUs (``/dev/nvidia*``, ``/dev/dri``, ``/dev/kfd``) where the node has them.

The sandbox is data (``Confinement``: the paths to hide, to read and to write) turned
into bwrap's arguments by one pure function, ``bwrap_argv``; no shell is involved.
Renderers that need none of the above (the in-process ``noop``) are not wrapped.
"""

from __future__ import annotations

import logging
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MODES = ("auto", "bwrap", "off")
PROBE_TIMEOUT = 30.0
# What every sandbox is: the root read-only, fresh /dev and /proc, nothing shared.
BASE_ARGS = (
    "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
    "--unshare-all", "--die-with-parent", "--cap-drop", "ALL",
)  # fmt: skip
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri", "/dev/kfd")  # NVIDIA, DRM (Intel, AMD), ROCm
HOST_HIDDEN = (Path("/run"),)  # daemons' sockets: docker, dbus, a local Redis
# Where a node user's credentials are, in their home folder: hidden one by one where
# the home folder cannot be hidden whole (renderers run from inside it: a pyenv Python).
HOME_CREDENTIALS = (
    ".aws", ".azure", ".config", ".docker", ".git-credentials", ".gnupg", ".kube",
    ".netrc", ".npmrc", ".pgpass", ".pypirc", ".ssh",
)  # fmt: skip
# Environment variables that name credential files, wherever they are.
CREDENTIAL_FILE_VARIABLES = (
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
)  # fmt: skip
# A shared storage's folders that are not one job's: every studio's contents, the
# manifests, other jobs' frames and logs, uploads on their way in.
STORAGE_HIDDEN = ("blobs", "manifests", "incoming", "jobs")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # where ``workers`` is imported from


class SandboxUnavailable(Exception):
    """The sandbox the node was told to require does not run here; ``str`` says why."""


@dataclass(frozen=True, slots=True)
class Confinement:
    """What one renderer may touch, as data.

    ``hidden``: not there (a folder becomes empty and read-only, a file ``/dev/null``);
    ``readable``: visible read-only again, inside a hidden folder; ``writable``: the
    only places it writes to the node's files; ``private``: an empty tmpfs each, its
    own; ``devices``: device files it keeps; ``cwd``: where it starts.
    """

    hidden: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    private: tuple[Path, ...] = (Path("/tmp"),)
    devices: tuple[Path, ...] = ()
    cwd: Path | None = None


def bwrap_argv(executable: str, confinement: Confinement, argv: Sequence[str]) -> list[str]:
    """The command that runs ``argv`` confined: ``executable`` (bwrap) and its arguments.

    Mounts are made parents first (a folder hidden, then a folder inside it bound
    back), and at one path: hidden, then private, readable, writable. Paths that do
    not exist are left out: there is nothing to hide or to bind. A hidden folder is made
    read-only last, so that bwrap can still create the mount points inside it.
    """
    mounts: list[tuple[int, int, str, list[str]]] = []
    hidden_folders: list[str] = []
    bound = {str(path) for path in (*confinement.readable, *confinement.writable)}
    for path in _existing(confinement.hidden):
        if path.is_dir():
            mounts.append((len(path.parts), 0, str(path), ["--tmpfs", str(path)]))
            if str(path) not in bound:
                hidden_folders.append(str(path))
        else:  # a file, a socket: an empty file where it was
            mounts.append((len(path.parts), 0, str(path), ["--ro-bind", "/dev/null", str(path)]))
    for path in confinement.private:
        mounts.append((len(path.parts), 1, str(path), ["--tmpfs", str(path)]))
    for path in _existing(confinement.readable):
        mounts.append((len(path.parts), 2, str(path), ["--ro-bind", str(path), str(path)]))
    for path in _existing(confinement.writable):
        mounts.append((len(path.parts), 3, str(path), ["--bind", str(path), str(path)]))
    for path in _existing(confinement.devices):
        mounts.append((len(path.parts), 4, str(path), ["--dev-bind", str(path), str(path)]))
    command = [executable, *BASE_ARGS]
    for _depth, _rank, _path, arguments in sorted(mounts, key=lambda m: m[:3]):
        command += arguments
    for folder in hidden_folders:
        command += ["--remount-ro", folder]
    if confinement.cwd is not None:
        command += ["--chdir", str(confinement.cwd)]
    return [*command, "--", *argv]


def _existing(paths: Iterable[Path]) -> list[Path]:
    unique = dict.fromkeys(Path(path) for path in paths)
    return [path for path in unique if path.exists()]


def private_folders() -> tuple[Path, ...]:
    """``/tmp`` and this node's temporary folder (``TMPDIR``), which the renderer also
    gets in its environment: empty and its own, each."""
    return tuple(dict.fromkeys((Path("/tmp"), Path(tempfile.gettempdir()).resolve())))


def gpu_devices() -> tuple[Path, ...]:
    found: list[Path] = []
    for pattern in GPU_DEVICES:
        found += sorted(Path("/").glob(pattern.lstrip("/")))
    return tuple(path for path in found if path.is_dir() or _is_device(path))


def _is_device(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def runtime_paths(extra: Iterable[str | Path] = ()) -> tuple[Path, ...]:
    """What renderers run from (this Python, this package, a Blender): never hidden."""
    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable), PACKAGE_ROOT]
    paths += [Path(path) for path in extra]
    return tuple(dict.fromkeys(path.resolve() for path in paths))


def hideable(paths: Iterable[Path], runtime: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``paths`` resolved, split into those a sandbox may hide and those it may not
    (they hold what renderers run from: hiding a data folder that holds the virtual
    environment would leave renderers without their Python)."""
    allowed: list[Path] = []
    refused: list[Path] = []
    for path in dict.fromkeys(Path(path).resolve() for path in paths):
        if any(part == path or part.is_relative_to(path) for part in runtime):
            refused.append(path)
        else:
            allowed.append(path)
    return allowed, refused


def credential_paths(home: Path, runtime: Sequence[Path], environ: Mapping[str, str]) -> list[Path]:
    """The node user's credentials: their ``home`` folder whole, or where renderers run
    from inside it, its credential files and folders (``HOME_CREDENTIALS``) one by one;
    and the files the node's environment names (``CREDENTIAL_FILE_VARIABLES``)."""
    whole, _ = hideable([home], runtime)
    paths = whole or [home / name for name in HOME_CREDENTIALS]
    return paths + [Path(environ[name]) for name in CREDENTIAL_FILE_VARIABLES if environ.get(name)]


@dataclass(frozen=True, slots=True)
class Sandbox:
    """bubblewrap as this node runs it, with the node's own paths to hide."""

    executable: str
    hidden: tuple[Path, ...] = ()
    runtime: tuple[Path, ...] = field(default_factory=runtime_paths)
    devices: tuple[Path, ...] = field(default_factory=gpu_devices)
    private: tuple[Path, ...] = field(default_factory=private_folders)

    def confinement(self, storage: Path, frames: Path, files: Path | None) -> Confinement:
        """One attempt's: it writes to ``frames``; it reads ``files`` (the job's folder),
        or, for a job without one, the storage root, where its scene is, less the
        storage's own folders (``STORAGE_HIDDEN``; its frames folder is bound back)."""
        storage = storage.resolve()
        hidden = [*self.hidden]
        if files is not None:  # the job's own files: other studios' stay out of sight
            hidden += hideable([storage], self.runtime)[0]
        else:
            hidden += hideable([storage / name for name in STORAGE_HIDDEN], self.runtime)[0]
        # What renderers run from stays visible where a private folder covers it (a
        # checkout or a virtual environment under /tmp: CI's, a developer's).
        covered = [path for path in self.runtime if _inside_any(path, self.private)]
        return Confinement(
            hidden=tuple(hidden),
            readable=(*covered, files.resolve() if files is not None else storage),
            writable=(frames.resolve(),),
            private=self.private,
            devices=self.devices,
            cwd=storage,
        )

    def wrap(
        self, argv: Sequence[str], storage: Path, frames: Path, files: Path | None = None
    ) -> list[str]:
        return bwrap_argv(self.executable, self.confinement(storage, frames, files), argv)

    def describe(self) -> str:
        return (
            f"a sandbox ({self.executable}): the node's files read-only but its frames "
            "folder and a private /tmp, no network"
        )


def _inside_any(path: Path, folders: Iterable[Path]) -> bool:
    return any(path == folder or path.is_relative_to(folder) for folder in folders)


class NodeSandbox:
    """The sandbox this node's renderers run in; the node says which as it starts
    (workers/node.py), before its render slots fork. None: renderers run unconfined."""

    def __init__(self) -> None:
        self.sandbox: Sandbox | None = None

    def use(self, sandbox: Sandbox | None) -> None:
        self.sandbox = sandbox

    def wrap(
        self, argv: Sequence[str], storage: Path, frames: Path, files: Path | None = None
    ) -> list[str]:
        """``argv`` as this node starts it: in the sandbox, or as it is."""
        if self.sandbox is None:
            return list(argv)
        return self.sandbox.wrap(argv, storage, frames, files)

    def describe(self) -> str:
        return "no sandbox" if self.sandbox is None else self.sandbox.describe()


SANDBOX = NodeSandbox()


def find_sandbox(
    mode: str, hidden: Iterable[Path] = (), runtime: Iterable[str | Path] = ()
) -> Sandbox | None:
    """The sandbox ``mode`` asks for, tried once: None for ``off``, or for ``auto`` where
    bwrap is missing or does not run (with one warning); ``SandboxUnavailable`` for
    ``bwrap`` then. ``hidden``: the node's own paths; ``runtime``: more paths renderers
    run from (a Blender executable), besides this Python and this package."""
    if mode not in MODES:
        raise ValueError(f"sandbox: {mode!r} is none of {', '.join(MODES)}")
    if mode == "off":
        return None
    try:
        sandbox = _working_bwrap(hidden, runtime_paths(runtime))
    except SandboxUnavailable as error:
        if mode == "bwrap":
            raise
        log.warning("sandbox: none, renderers run unconfined: %s", error)
        return None
    return sandbox


def _working_bwrap(hidden: Iterable[Path], runtime: tuple[Path, ...]) -> Sandbox:
    executable = shutil.which("bwrap")
    if executable is None:
        raise SandboxUnavailable(
            "no bwrap on this node's PATH (Debian and Ubuntu: apt install bubblewrap)"
        )
    allowed, refused = hideable([*HOST_HIDDEN, *hidden], runtime)
    for path in refused:
        log.warning("sandbox: %s stays visible to renderers: they run from inside it", path)
    sandbox = Sandbox(executable, tuple(allowed), runtime)
    confinement = Confinement(sandbox.hidden, private=sandbox.private, devices=sandbox.devices)
    probe = bwrap_argv(executable, confinement, ["true"])
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SandboxUnavailable(f"{executable} does not run: {error}") from None
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise SandboxUnavailable(f"{executable} cannot make a sandbox here: {why[0]}")
    log.info("sandbox: renderers run in %s", sandbox.describe())
    return sandbox
