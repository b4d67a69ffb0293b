"""The ``openjd`` renderer: a chunk of an OpenJD step, run in one openjd-sessions Session
(workers/openjd_session.py) by the runner (``_render_in_session``).

The template and its parameter values come with the job's settings; each frame's task
parameters come with the chunk (``ChunkMessage.tasks``), computed by the scheduler: a
node never derives them itself, as openjd-model's order may differ between versions.
"""

from __future__ import annotations

from pathlib import Path

from openjd.model import Job

from scheduler.wire.messages import ChunkMessage
from scheduler.wire.openjd import TemplateError, instantiate, read_template
from scheduler.wire.renderers import OpenJdRenderer
from workers.openjd_session import LogOut, StepSession, Task


class OpenJdSessions:
    model = OpenJdRenderer

    def session(
        self, message: ChunkMessage, root: Path, log: LogOut, env: dict[str, str]
    ) -> tuple[StepSession, list[Task]]:
        """The chunk's session (not started) and its tasks; ``ValueError`` says why a
        chunk cannot run (its settings, its template, its tasks)."""
        settings = self.model.model_validate({**message.settings, "kind": message.renderer})
        try:
            job: Job = instantiate(read_template(settings.template), settings.parameters)
        except TemplateError as error:
            raise ValueError(f"the template: {error}") from None
        if settings.step >= len(job.steps):
            raise ValueError(f"the template has no step {settings.step}")
        tasks = message.tasks
        if tasks is None or len(tasks) != len(message.frames):
            raise ValueError("the chunk does not carry one task's parameters per frame")
        pairs: list[Task] = []
        for frame, task in zip(message.frames, tasks, strict=True):
            if not all(isinstance(v, list) and len(v) == 2 for v in task.values()):
                raise ValueError(f"frame {frame}: a task parameter is [type, value]")
            pairs.append((frame, {name: (kind, value) for name, (kind, value) in task.items()}))
        session_id = f"chunk-{message.chunk_id}-attempt-{message.attempt}"
        return StepSession(job, settings.step, session_id, root, log, env=env), pairs
