"""The ``openjd`` renderer: a chunk of an OpenJD step, run in one openjd-sessions Session
(workers/openjd_session.py) by the runner (``_render_in_session``).

The template and its parameter values come with the job's settings; each frame's task
parameters come with the chunk (``ChunkMessage.tasks``), computed by the scheduler: a
node never derives them itself, as openjd-model's order may differ between versions.

With a job user (workers/job_user.py), the session's commands run as them, and each
attempt's session root (``session_root``) is the node's folder, mode 0710 and of the
user's own group: the user passes through it to its session's working directory
(openjd-sessions makes that 0770, of the same group), and cannot list it. Without one,
the root is 0700: the node's own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from scheduler.wire.messages import ChunkMessage
from scheduler.wire.renderers import OpenJdRenderer
from workers.job_user import JobUser

if TYPE_CHECKING:  # openjd's packages are imported when a node first runs a template
    from openjd.sessions import ActionStatus, PathMappingRule

    from workers.openjd_session import LogOut, StepSession, Task

FILES_FOLDER = "files"  # the job's files in a session's root
ROOT_MODE_SHARED = 0o710  # a session root with a job user: its group passes, never lists


class OpenJdSessions:
    model = OpenJdRenderer

    def session_root(self, user: JobUser | None = None) -> Path:
        """A new folder of the node's for one attempt's session, closed to others but,
        with a job user, passable (not listable) by the job user's group. ``OSError``
        if it cannot be made so."""
        root = Path(tempfile.mkdtemp(prefix="renderfarm-openjd-"))  # 0700, the node's
        if user is None:
            return root
        try:
            shutil.chown(root, group=user.group)
            root.chmod(ROOT_MODE_SHARED)
        except (OSError, LookupError) as error:
            shutil.rmtree(root, ignore_errors=True)
            raise OSError(f"its session folder is not {user.name}'s to reach: {error}") from None
        return root

    def take_files(self, files: Path, root: Path, user: JobUser | None = None) -> Path:
        """The job's files, laid out for this attempt in ``files``, moved into the
        session's root (``root/files``), where its actions read them: with a job user,
        given to the user's group to read (its folders to pass). The files are links to
        the node's cache, whose own folder no job user passes: what the group may read
        is only what a session's folder shows it, and it goes with the session."""
        dest = root / FILES_FOLDER
        shutil.move(files, dest)
        if user is None:
            return dest
        for folder, _folders, names in os.walk(dest):
            shutil.chown(folder, group=user.group)
            os.chmod(folder, 0o750)
            for name in names:
                path = os.path.join(folder, name)
                shutil.chown(path, group=user.group)
                os.chmod(path, 0o640)
        return dest

    def session(
        self,
        message: ChunkMessage,
        root: Path,
        log: LogOut,
        env: dict[str, str | None],
        on_status: Callable[[Sequence[int], ActionStatus], None] | None = None,
        files: Path | None = None,
        job_user: JobUser | None = None,
    ) -> tuple[StepSession, list[Task]]:
        """The chunk's session (not started) and its tasks; ``ValueError`` says why a
        chunk cannot run (its settings, its template, its tasks). ``on_status`` hears
        its actions' statuses, with their tasks' frames; its commands run as the node's
        job user, if it has one, with ``env`` (None: unset). With the job's ``files``
        and a ``files_root``, PATH values under the root map to the files."""
        from openjd.sessions import PosixSessionUser

        from scheduler.wire.openjd import TemplateError, instantiate, read_template
        from workers.openjd_session import StepSession

        settings = self.model.model_validate({**message.settings, "kind": message.renderer})
        try:
            job = instantiate(read_template(settings.template), settings.parameters)
        except TemplateError as error:
            raise ValueError(f"the template: {error}") from None
        if settings.step >= len(job.steps):
            raise ValueError(f"the template has no step {settings.step}")
        pairs = [_task(task) for task in message.tasks or ()]
        if sorted(f for frames, _ in pairs for f in frames) != sorted(message.frames):
            raise ValueError("the chunk's tasks do not cover its frames, each once")
        session_id = f"chunk-{message.chunk_id}-attempt-{message.attempt}"
        user = PosixSessionUser(job_user.name, group=job_user.group) if job_user else None
        session = StepSession(
            job, settings.step, session_id, root, log, env=env, user=user, on_status=on_status,
            path_mapping=_path_mapping(settings, files),
        )  # fmt: skip
        return session, pairs


def _path_mapping(settings: OpenJdRenderer, files: Path | None) -> list[PathMappingRule]:
    """The studio's files root, mapped to where this node laid the job's files out."""
    from openjd.sessions import PathFormat, PathMappingRule

    if settings.files_root is None or files is None:
        return []
    windows = settings.files_root_format == "WINDOWS"
    source = PureWindowsPath(settings.files_root) if windows else PurePosixPath(settings.files_root)
    return [
        PathMappingRule(
            source_path_format=PathFormat(settings.files_root_format),
            source_path=source,
            destination_path=files,
        )
    ]


def _task(task: object) -> Task:
    """``{"frames": [...], "parameters": {name: [type, value]}}`` as a session's task."""
    if not isinstance(task, dict):
        raise ValueError(f"a task is an object, not {task!r:.100}")
    frames, parameters = task.get("frames"), task.get("parameters")
    if not isinstance(frames, list) or not all(type(f) is int for f in frames):
        raise ValueError(f"a task's frames are integers, not {frames!r:.100}")
    if not isinstance(parameters, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
        for v in parameters.values()
    ):
        raise ValueError(f"a task's parameters are name: [type, value], not {parameters!r:.100}")
    return frames, {name: (kind, value) for name, (kind, value) in parameters.items()}
