"""Runs a chunk of an OpenJD step's tasks in one openjd-sessions Session.

The job's environments, then the step's, are entered once when the session starts and
exited in reverse order when it ends (after the last task, or after a failed one), not
around each task. Each task's ``onRun`` runs with its parameters; a task is done when
its action succeeds. The session's actions report through its callback:
``openjd_progress``, ``openjd_status`` and ``openjd_fail`` lines become the progress,
the status line and the failure message passed on here: ``on_status`` hears each
action's status with the frames of its task (none for an environment's action).

``cancel`` (from another thread) cancels the running action as its template's
``cancelation`` says (notify, then terminate), no further action starts, and the
environments entered are not exited: a cancelled session runs nothing more. Every
process of the session runs in its own process group, which openjd-sessions kills.

The session's own log (its banners, and every line its actions print) goes to ``log``.

``env`` is what the session's actions get on top of the node's environment, where a
value of None unsets the variable (openjd-sessions starts an action with this
process's environment plus these, or, as another ``user``, with that user's login
environment plus these): how the node's secrets are kept from a template.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from openjd.model import Job, ParameterValue, ParameterValueType
from openjd.sessions import (
    LOG,
    ActionState,
    ActionStatus,
    PathMappingRule,
    Session,
    SessionState,
    SessionUser,
)

# (the frames it renders, name -> (OpenJD type, value)): a frame, or a CHUNK[INT]'s run
Task = tuple[Sequence[int], Mapping[str, tuple[str, str]]]


KILL_WAIT_SECONDS = 10.0  # how long a dying session waits for its killed action to end
DEFAULT_NOTIFY_SECONDS = 120.0  # OpenJD's notify period where a template gives none


class LogOut(Protocol):
    """Where a session's log lines go: a text file, or anything written to like one."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class TaskFailed(RuntimeError):
    """An action of the session did not succeed; ``frames`` are the task's (empty: an
    environment's), the message the action's ``openjd_fail`` line or its exit code."""

    def __init__(self, frames: Sequence[int], message: str) -> None:
        super().__init__(message)
        self.frames = list(frames)


class SessionCancelled(RuntimeError):
    """The session was cancelled before its tasks were done."""


@dataclass(frozen=True, slots=True)
class TaskDone:
    frames: Sequence[int]
    seconds: float  # from its action's start to its end


class StepSession:
    """One session of one step of a job: ``run`` its tasks, ``cancel`` from elsewhere."""

    def __init__(
        self,
        job: Job,
        step_index: int,
        session_id: str,
        root: Path,
        log: LogOut,
        env: Mapping[str, str | None] | None = None,
        user: SessionUser | None = None,
        cancel_grace: timedelta | None = None,
        on_status: Callable[[Sequence[int], ActionStatus], None] | None = None,
        path_mapping: Sequence[PathMappingRule] = (),
    ) -> None:
        self.job = job
        self.step = job.steps[step_index]
        self.session_id = session_id
        self.root = root
        self.log = log
        self.env = dict(env or {})
        self.user = user
        self.cancel_grace = cancel_grace
        self.on_status = on_status
        self.path_mapping = list(path_mapping)
        self._ended = threading.Event()
        self._status: ActionStatus | None = None
        self._frames: Sequence[int] = ()  # the running action's task's
        self._cancelled = threading.Event()
        self._session: Session | None = None
        self._lock = threading.Lock()

    def run(self, tasks: Sequence[Task], done: Callable[[TaskDone], None]) -> None:
        """Enter the environments, run ``tasks`` in order (``done`` after each), exit the
        environments. Raises TaskFailed or SessionCancelled."""
        handler = _SessionLog(self.session_id, self.log)
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        try:
            with Session(
                session_id=self.session_id,
                job_parameter_values=_job_parameters(self.job),
                job_name=self.job.name,
                user=self.user,
                callback=self._callback,
                # None unsets a variable: openjd-sessions' actions take it so
                os_env_vars=self.env,  # type: ignore[arg-type]
                path_mapping_rules=self.path_mapping or None,
                session_root_directory=self.root,
            ) as session:
                with self._lock:
                    self._session = session
                self._run(session, tasks, done)
        finally:
            with self._lock:
                self._session = None
            LOG.removeHandler(handler)

    def cancel(self) -> None:
        """Stop the session: its running action is cancelled, nothing else starts."""
        self._cancelled.set()
        self._cancel_running()

    def _cancel_running(self, grace: timedelta | None = None) -> None:
        with self._lock:
            session = self._session
            if session is None or session.state != SessionState.RUNNING:
                return
            with contextlib.suppress(RuntimeError):  # it ended meanwhile
                limit = grace if grace is not None else self.cancel_grace  # None: the template's
                session.cancel_action(time_limit=limit)

    def _stop_running(self) -> None:
        """This process is ending while an action runs: in a Celery pool process, a
        revoke's SIGTERM (the studio cancelled, or the chunk was taken back) is
        billiard's, which raises SystemExit in the thread waiting here. Cancel the
        action as its template says (notify, then terminate after its notify period),
        wait for it, and kill at once what is left: nothing of the session may outlive
        the process."""
        self._cancelled.set()
        self._cancel_running()
        if not self._ended.wait(self._notify_seconds() + KILL_WAIT_SECONDS):
            self._cancel_running(grace=timedelta(0))
            self._ended.wait(KILL_WAIT_SECONDS)

    def _notify_seconds(self) -> float:
        """The longest notify period of the session's actions (OpenJD's default is 120 s
        where a template asks to be notified without saying how long); 0: terminate."""
        environments = [*(self.job.jobEnvironments or ()), *(self.step.stepEnvironments or ())]
        actions: list[Any] = [self.step.script.actions.onRun]
        for environment in environments:
            script = environment.script
            if script is not None:
                actions += [script.actions.onEnter, script.actions.onExit]
        periods = [0.0]
        for action in actions:
            cancelation = getattr(action, "cancelation", None)
            if str(getattr(cancelation, "mode", "")).endswith("NOTIFY_THEN_TERMINATE"):
                period = getattr(cancelation, "notifyPeriodInSeconds", None)
                periods.append(float(period) if period is not None else DEFAULT_NOTIFY_SECONDS)
        return max(periods)

    def _run(
        self, session: Session, tasks: Sequence[Task], done: Callable[[TaskDone], None]
    ) -> None:
        entered: list[str] = []
        failure: BaseException | None = None
        try:
            for environment in [
                *(self.job.jobEnvironments or ()),
                *(self.step.stepEnvironments or ()),
            ]:
                self._check_cancel()
                entered.append(
                    self._act(
                        (),
                        lambda env=environment: session.enter_environment(  # type: ignore[misc]
                            environment=env, step_name=self.step.name
                        ),
                    )
                )
            for frames, parameters in tasks:
                self._check_cancel()
                started = time.monotonic()
                values = {
                    name: ParameterValue(type=ParameterValueType(kind), value=value)
                    for name, (kind, value) in parameters.items()
                }
                self._act(
                    frames,
                    lambda values=values: session.run_task(  # type: ignore[misc]
                        step_script=self.step.script,
                        task_parameter_values=values,
                        step_name=self.step.name,
                    ),
                )
                done(TaskDone(frames, time.monotonic() - started))
        except BaseException as error:
            failure = error
            raise
        finally:
            if not self._cancelled.is_set():
                for identifier in reversed(entered):
                    try:
                        self._act((), lambda i=identifier: session.exit_environment(identifier=i))  # type: ignore[misc]
                    except TaskFailed:
                        if failure is None:
                            raise

    def _act(self, frames: Sequence[int], start: Callable[[], Any]) -> Any:
        """Start an action and wait for it to end; its result (an environment's id)."""
        self._ended.clear()
        self._status = None
        self._frames = frames
        result = start()
        if self._cancelled.is_set():  # cancelled while it was starting
            self._cancel_running()
        try:
            self._ended.wait()
        except BaseException:  # this process is ending (Celery's revoke terminates it)
            self._stop_running()
            raise
        status = self._status
        assert status is not None
        if status.state == ActionState.SUCCESS:
            return result
        if status.state == ActionState.CANCELED or self._cancelled.is_set():
            raise SessionCancelled("the session was cancelled")
        if status.state == ActionState.TIMEOUT:
            raise TaskFailed(frames, "the action ran past its timeout")
        message = status.fail_message or f"the action exited with code {status.exit_code}"
        raise TaskFailed(frames, message)

    def _check_cancel(self) -> None:
        if self._cancelled.is_set():
            raise SessionCancelled("the session was cancelled")

    def _callback(self, _session_id: str, status: ActionStatus) -> None:
        self._status = status
        if self.on_status is not None:
            self.on_status(self._frames, status)
        if status.state != ActionState.RUNNING:
            self._ended.set()


def _job_parameters(job: Job) -> dict[str, ParameterValue]:
    return {
        name: ParameterValue(type=ParameterValueType(parameter.type.value), value=parameter.value)
        for name, parameter in (job.parameters or {}).items()
    }


class _SessionLog(logging.Handler):
    """openjd-sessions' log records of one session, written to its attempt's log."""

    def __init__(self, session_id: str, out: LogOut) -> None:
        super().__init__(logging.INFO)
        self.session_id = session_id
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "session_id", None) != self.session_id:
            return
        try:
            self.out.write(record.getMessage() + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass
