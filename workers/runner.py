"""Runs one attempt of a chunk on this node and reports it as events. No Celery here.

A process renderer runs as a child in its own process group (so the whole tree can
be killed), dies with its parent (``PR_SET_PDEATHSIG``), and is killed when the
chunk's time limit passes. Its output goes to the attempt's log in storage; lines
``renderfarm-frame: N [seconds=S] [cpu=C] [ext=.exr]`` report frames as they finish
(``ext``: the frame's file has this extension instead of the output pattern's). A
renderer that fails is quoted: its last lines of output that are not progress (the
renderer's ``progress`` pattern) end the failure's message. CPU time
is measured from the kernel's accounting of waited-for children, so frames that a
renderer does not time itself still get honest figures (the chunk's, shared evenly).

Progress: given a ``Board`` (scheduler/wire/progress.py), the sample counts that a
renderer's ``samples`` reads from its progress lines (Blender's ``Fra:N ... Sample
i/n``) are posted there for the API, coalesced (``ChunkProgress``: about one post a
second per attempt), and removed as the attempt ends. Nothing of it reaches the
scheduler or the database.

``emit`` receives each event encoded for the wire: a typed event of
scheduler/wire/messages.py, as ``event.to_dict()``; the Celery task passes a function
that publishes it.

Energy: with a ``FrameMeter`` (the node's energy ledger, workers/energy.py) each
frame report carries the joules the ledger attributed to it: at each frame line, what
the attempt accumulated since the previous one; frames the renderer did not mark
share the rest evenly, or else the last frame takes the renderer's last moments (so
its figure in "finished" is a little larger than in its "frame" event, and the
"finished" one stands). A failed attempt reports the energy it used, too. The ledger
hears of an attempt once it has lasted ``RESOLUTION_SECONDS``: one that ends sooner
(a no-op, a trivial task) is below the ledger's resolution, costs no round trip and
carries 0 J; its few joules go to the renders beside it or to the node's idle.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import logging
import math
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
import psutil

from scheduler.core.frames import format_frame_spec
from scheduler.wire.messages import (
    MAX_WARNINGS,
    ChunkEvent,
    ChunkMessage,
    FailedEvent,
    FinishedEvent,
    FrameEvent,
    FrameReport,
    MessageError,
    StartedEvent,
    task_id_for,
)
from scheduler.wire.progress import TIMEOUT as PROGRESS_TIMEOUT
from scheduler.wire.progress import Board, ChunkProgress
from workers.assets import FetchError, JobFiles, Outputs, open_written
from workers.energy import RESOLUTION_SECONDS
from workers.job_user import JOB_USER, JobUser, RunAsUnavailable
from workers.later import LATER
from workers.memory import (
    RENDER_MEMORY,
    out_of_memory_message,
    ran_out_of_memory,
    starting_with_bound,
)
from workers.processes import kill_groups, stop_process
from workers.renderers import InProcessRenderer, ProcessRenderer, renderer_for
from workers.renderers.openjd import OpenJdSessions
from workers.sandbox import SANDBOX

if TYPE_CHECKING:  # openjd's packages load when a node first runs a template (~0.3 s)
    from openjd.sessions import ActionStatus

    from workers.openjd_session import StepSession, TaskDone

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
E = TypeVar("E", bound=ChunkEvent)

FRAME_LINE = re.compile(
    rb"^renderfarm-frame:\s*(-?\d+)(?:\s+seconds=([0-9.]+))?(?:\s+cpu=([0-9.]+))?"
    rb"(?:\s+ext=(\.[A-Za-z0-9]{1,8})\b)?"
)
WARNING_LINE = re.compile(rb"^renderfarm-warning:\s*(.+)")  # e.g. a missing texture
QUOTED_LINES = 6  # of a failed renderer's output, in the failure's message
Marker = tuple[int, float | None, float | None, str | None]  # frame, seconds, cpu, ext
Samples = Callable[[bytes], tuple[int, int, int] | None]  # a line -> frame, done, total
KILL_GRACE_SECONDS = 3.0
READER_JOIN_SECONDS = 5.0  # a failed attempt's renderer is stopped: its output ends
STARTED_GRACE_SECONDS = 0.5

# Process groups of renderers running in this process, for the SIGTERM handler.
_running_groups: set[int] = set()
_running_sessions: set[StepSession] = set()  # OpenJD sessions running in this worker


class FrameMeter(Protocol):
    """The node's energy ledger as a render slot sees it (workers.energy.LedgerClient)."""

    method: str

    def begin(self, key: str, pid: int) -> None: ...

    def brief(self, render_seconds: list[float]) -> None: ...

    def frame(self, key: str, render_seconds: float) -> float | None: ...

    def end(
        self, key: str, cpu_total: float | None, render_seconds: list[float]
    ) -> tuple[float, list[float]] | None: ...


class AttemptMeter:
    """One attempt's energy: frame by frame, and its whole as the attempt ends."""

    def __init__(self, meter: FrameMeter | None, key: str) -> None:
        self.meter = meter
        self.key = key
        self.spent: float | None = 0.0 if meter is not None else None
        self._ended = meter is None
        self._pid: int | None = None  # what renders it, once it began
        self._entered = False  # whether the ledger counts it (it lasted long enough)
        self._lock = threading.Lock()  # the later call to enter it may race its end

    def begin(self, pid: int) -> None:
        if self.meter is not None:
            self._pid = pid
            LATER.call(RESOLUTION_SECONDS, self._enter)

    def _enter(self) -> None:
        """Tell the ledger the attempt runs (once; not after it ended)."""
        with self._lock:
            if self.meter is None or self._entered or self._ended or self._pid is None:
                return
            self._entered = True
            self.meter.begin(self.key, self._pid)

    def frame(self, report: FrameReport) -> FrameReport:
        if self.meter is None:
            return report
        self._enter()
        return self._with_energy(report, self.meter.frame(self.key, report.render_seconds))

    def end(
        self,
        cpu_total: float | None = None,
        unmarked: list[FrameReport] | None = None,
        last: FrameReport | None = None,
    ) -> list[FrameReport]:
        """``unmarked`` frames with their shares of the energy since the last frame.

        With every frame marked, the renderer's last moments (after its last frame
        line, until it exited) go to ``last``, the last frame, returned instead.
        """
        unmarked = unmarked or []
        with self._lock:
            if self._ended or self.meter is None:
                return unmarked
            self._ended = True
            entered = self._entered
        if not entered:
            if self._pid is None:  # it never began: nothing was measured
                self.spent = None
                return unmarked
            # Below the ledger's resolution: 0 J, no round trip (the module's docstring).
            self.meter.brief([r.render_seconds for r in unmarked])
            return [
                dataclasses.replace(r, energy_joules=0.0, energy_method=self.meter.method)
                for r in unmarked
            ]
        answer = self.meter.end(self.key, cpu_total, [r.render_seconds for r in unmarked])
        if answer is None:
            self.spent = None
            return unmarked
        left, shares = answer
        if self.spent is not None:
            self.spent += left
        if not unmarked and last is not None and last.energy_joules is not None:
            return [dataclasses.replace(last, energy_joules=last.energy_joules + left)]
        return [
            dataclasses.replace(r, energy_joules=j, energy_method=self.meter.method)
            for r, j in zip(unmarked, shares, strict=True)
        ]

    def _with_energy(self, report: FrameReport, joules: float | None) -> FrameReport:
        if joules is None or self.meter is None:
            self.spent = None  # a frame went unmetered: the attempt's sum is unknown
            return report
        if self.spent is not None:
            self.spent += joules
        return dataclasses.replace(report, energy_joules=joules, energy_method=self.meter.method)


class RenderFailed(Exception):
    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def chunk_event(
    kind: type[E], message: ChunkMessage, node: str, region: str = "", **fields: Any
) -> E:
    """An event of this attempt, stamped now, with the fields of its ``kind``."""
    return kind(
        chunk_id=message.chunk_id,
        attempt=message.attempt,
        job_id=message.job_id,
        node=node,
        region=region,
        at=time.time(),
        **fields,
    )


def run_message(
    data: dict[str, Any],
    storage: Path,
    node: str,
    emit: Emit,
    meter: FrameMeter | None = None,
    region: str = "",
    files: JobFiles | None = None,
    progress: Board | None = None,
) -> bool:
    """Read a chunk message and render it (``run_chunk``). A message this node cannot
    read fails its attempt with the reason, when it names one; else it is logged."""
    try:
        message = ChunkMessage.from_dict(data)
    except MessageError as error:
        _fail_unread(data, node, region, emit, str(error))
        return False
    return run_chunk(message, storage, node, emit, meter, region, files, progress)


def _fail_unread(data: Any, node: str, region: str, emit: Emit, error: str) -> None:
    """Fail the attempt a message names with ``error``; log it if it names none."""
    ids: dict[str, Any] = {}
    if isinstance(data, dict):
        ids = {key: data.get(key) for key in ("chunk_id", "attempt", "job_id")}
    if ids and all(isinstance(v, int) and not isinstance(v, bool) for v in ids.values()):
        emit(FailedEvent(**ids, node=node, region=region, at=time.time(), error=error).to_dict())
    else:
        log.error("ignoring a chunk message that names no attempt: %s: %.300r", error, data)


def run_messages(
    messages: Sequence[dict[str, Any]],
    storage: Path,
    node: str,
    publish: Callable[[list[dict[str, Any]]], None],
    meter: FrameMeter | None = None,
    region: str = "",
    files: JobFiles | None = None,
    progress: Board | None = None,
    hand_back: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Render a bundle's chunk messages one after another (``run_message`` each); their
    events go out together (``Coalesced``), all of them before this returns. Returns
    how many rendered.

    A bundle is milliseconds long by its job's latest chunks; one still running after
    ``HAND_BACK_SECONDS`` (a job whose frames grew heavy) gives ``hand_back`` the chunks
    it has not started, to go to its node's queue one a message, where the node's
    other slots take them. A chunk that fails unexpectedly (a defect of the node's,
    not its renderer's) fails its attempt with the error, and the next one runs.
    """
    left = _Left(messages)
    if hand_back is not None:  # in a thread of its own: the broker may keep it waiting
        LATER.call(HAND_BACK_SECONDS, lambda: _in_thread(left.hand_back, hand_back))
    rendered = 0
    with Coalesced(publish, COALESCE_SECONDS) as emit:
        while (data := left.next()) is not None:
            try:
                rendered += run_message(data, storage, node, emit, meter, region, files, progress)
            except Exception as error:
                log.exception("a chunk of a bundle failed: %.200r", data)
                _fail_unread(data, node, region, emit, f"the node failed to run it: {error!r}")
    return rendered


HAND_BACK_SECONDS = 1.0  # a bundle's budget is milliseconds: this is a misjudged one


def _in_thread(function: Callable[[Any], None], argument: Any) -> None:
    threading.Thread(target=function, args=(argument,), name="hand-back", daemon=True).start()


class _Left:
    """A bundle's chunks not started yet: the next to render, or handed back."""

    def __init__(self, messages: Sequence[dict[str, Any]]) -> None:
        self._left = collections.deque(messages)
        self._lock = threading.Lock()

    def next(self) -> dict[str, Any] | None:
        with self._lock:
            return self._left.popleft() if self._left else None

    def hand_back(self, send: Callable[[dict[str, Any]], None]) -> None:
        """Send each chunk left elsewhere, one by one: a chunk is rendered here or sent,
        never both. A chunk ``send`` refuses as unreadable (``MessageError``) stays, to
        fail here with its reason; if the broker fails, the rest stay and render here.
        The render loop waits meanwhile (``send`` retries a few times, then gives up)."""
        with self._lock:
            if not self._left:
                return
            log.warning("a bundle is slower than its job's pace: %d chunk(s) handed back "
                        "to the node's queue", len(self._left))  # fmt: skip
            kept: list[dict[str, Any]] = []
            try:
                while self._left:
                    try:
                        send(self._left[0])
                    except MessageError:
                        kept.append(self._left[0])
                    self._left.popleft()
            except Exception:
                log.exception("handing chunks back failed: %d render in the bundle",
                              len(self._left) + len(kept))  # fmt: skip
            finally:
                self._left.extendleft(reversed(kept))


def run_chunk(
    message: ChunkMessage,
    storage: Path,
    node: str,
    emit: Emit,
    meter: FrameMeter | None = None,
    region: str = "",
    files: JobFiles | None = None,
    progress: Board | None = None,
) -> bool:
    """Render the chunk; emit started, frame... and finished or failed. True if it rendered.

    "started" goes out after ``STARTED_GRACE_SECONDS`` or with the first frame,
    whichever comes first; a chunk done sooner sends only "finished", which carries
    ``started_at``. Short chunks thus cost the scheduler one event instead of two.
    """
    started = chunk_event(StartedEvent, message, node, region)
    notice = StartNotice(emit, started, STARTED_GRACE_SECONDS)
    started_at = time.time()
    task_id = task_id_for(message.chunk_id, message.attempt)
    energy = AttemptMeter(meter, task_id)
    warnings: list[str] = []  # the renderer's "renderfarm-warning:" lines, for the studio
    try:
        folder = _prepare_files(files, message, task_id)
        outputs = files.outputs if files is not None else None
        reports = render(
            message, storage, node, notice.emit, energy, region, folder, outputs, warnings,
            progress,
        )  # fmt: skip
    except RenderFailed as failure:
        energy.end()
        notice.settle()
        emit(
            chunk_event(
                FailedEvent, message, node, region, started_at=started_at, error=str(failure),
                exit_code=failure.exit_code, energy_joules=energy.spent, warnings=warnings,
            ).to_dict()
        )  # fmt: skip
        return False
    finally:
        energy.end()  # whatever happened, the ledger stops counting this attempt
        notice.settle()  # and no "started" follows its end
        if files is not None:
            files.release(message.manifest_id, task_id)
            _send_log(files, message, storage)
    notice.settle()
    emit(
        chunk_event(
            FinishedEvent, message, node, region, started_at=started_at, results=reports,
            exit_code=0, warnings=warnings,
        ).to_dict()
    )  # fmt: skip
    return True


COALESCE_SECONDS = 0.05  # a bundle's events wait at most this long to go out together


class Coalesced:
    """Events published together: at most ``wait`` s after the first of them, and all
    that are left as the block ends. In order: a batch is taken and published under
    one lock, so no later batch overtakes it."""

    def __init__(self, publish: Callable[[list[dict[str, Any]]], None], wait: float) -> None:
        self._publish = publish
        self._wait = wait
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._publishing = threading.Lock()

    def __enter__(self) -> Emit:
        return self.emit

    def __exit__(self, *_: object) -> None:
        self.flush()

    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)
            first = len(self._events) == 1
        if first:
            LATER.call(self._wait, self.flush)

    def flush(self) -> None:
        """Publish what is waiting; if the broker cannot take it, it waits on (for the
        next flush: the last one, as the block ends, raises)."""
        with self._publishing:
            with self._lock:
                events, self._events = self._events, []
            if events:
                try:
                    self._publish(events)
                except BaseException:
                    with self._lock:
                        self._events[:0] = events
                    raise


class StartNotice:
    """Sends the "started" event once, late, or not at all if the attempt ends first."""

    def __init__(self, emit: Emit, event: StartedEvent, grace: float) -> None:
        self._emit = emit
        self._event = event
        self._lock = threading.Lock()
        self._settled = False
        LATER.call(grace, self._send)

    def _send(self) -> None:
        with self._lock:
            if not self._settled:
                self._settled = True
                self._emit(self._event.to_dict())

    def emit(self, event: dict[str, Any]) -> None:
        """Emit a progress event, after "started" if that is still due."""
        self._send()
        self._emit(event)

    def settle(self) -> None:
        """The attempt has ended: "started" is sent no more."""
        with self._lock:
            self._settled = True


# What a renderer's environment leaves out, by name (upper-cased): the farm's settings
# (its node token), cloud credentials, and whatever looks like a secret. What renderers
# need (PATH, HOME, LANG, LC_*, TMPDIR, CUDA_*, OMP_*, PYTHONPATH, BLENDER_*) stays.
SECRET_PREFIXES = ("RENDERFARM_", "AWS_", "AZURE_", "GOOGLE_", "GCP_")
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL")  # anywhere in it
SECRET_SUFFIXES = ("_KEY",)


def is_secret_variable(name: str) -> bool:
    """Whether the environment variable ``name`` may hold a node's secret."""
    upper = name.upper()
    return (
        upper.startswith(SECRET_PREFIXES)
        or any(word in upper for word in SECRET_WORDS)
        or upper.endswith(SECRET_SUFFIXES)
    )


def renderer_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A renderer's environment: the node's (``environ``, else this process's), less
    the farm's settings and every variable that may hold a secret (``is_secret_variable``),
    which a scene's script has no business reading."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not is_secret_variable(k)}


def _prepare_files(files: JobFiles | None, message: ChunkMessage, task_id: str) -> Path | None:
    """The job's folder for this attempt (its manifest laid out), or None without one."""
    if message.manifest_id is None:
        return None
    if files is None:
        raise RenderFailed("this node was started without access to the farm's files")
    try:
        return files.prepare(message.manifest_id, task_id)
    except (FetchError, OSError, httpx.HTTPError, ValueError, TypeError, KeyError) as error:
        raise RenderFailed(f"the job's files could not be laid out: {error}") from None


def _send_log(files: JobFiles, message: ChunkMessage, storage: Path) -> None:
    """The attempt's log back to the farm (a node without the shared storage)."""
    if files.outputs is None or not (storage / message.log_path).is_file():
        return
    try:
        files.outputs.send(message.log_path, storage)
    except (FetchError, OSError, httpx.HTTPError) as error:
        log.warning("could not send %s back: %s", message.log_path, error)


def render(
    message: ChunkMessage,
    storage: Path,
    node: str,
    emit: Emit,
    energy: AttemptMeter,
    region: str = "",
    files: Path | None = None,
    outputs: Outputs | None = None,
    warnings: list[str] | None = None,
    progress: Board | None = None,
) -> list[FrameReport]:
    try:
        renderer = renderer_for(message.renderer)
    except LookupError as error:
        raise RenderFailed(str(error)) from None
    if hasattr(renderer, "argv"):
        process: ProcessRenderer = renderer  # type: ignore[assignment]
        return _render_in_child(
            message, storage, node, process, emit, energy, region, files, outputs, warnings,
            progress,
        )  # fmt: skip
    if isinstance(renderer, OpenJdSessions):
        return _render_in_session(
            message, storage, node, renderer, emit, energy, region, progress, files
        )
    in_process: InProcessRenderer = renderer  # type: ignore[assignment]
    energy.begin(os.getpid())
    try:
        reports = in_process.render(message, storage)
    except Exception as error:
        raise RenderFailed(f"{message.renderer} renderer raised {error!r}") from error
    return energy.end(None, reports)


def _render_in_child(
    message: ChunkMessage,
    storage: Path,
    node: str,
    renderer: ProcessRenderer,
    emit: Emit,
    energy: AttemptMeter,
    region: str,
    files: Path | None = None,
    outputs: Outputs | None = None,
    warnings: list[str] | None = None,
    progress: Board | None = None,
) -> list[FrameReport]:
    try:
        argv = renderer.argv(message, storage, files)
    except ValueError as error:  # settings this node's renderer refuses (pydantic's error)
        raise RenderFailed(f"{message.renderer} settings refused: {error}") from None
    except LookupError as error:  # what the renderer needs is not on this node
        raise RenderFailed(str(error)) from None
    log_path = storage / message.log_path
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    reported: dict[int, FrameReport] = {}
    with open(log_path, "ab", buffering=0) as log:
        log.write(
            f"renderfarm: node {node} attempt {message.attempt} of chunk {message.chunk_id}, "
            f"frames {message.frames[0]}..{message.frames[-1]}, in {SANDBOX.describe()}\n"
            f"$ {' '.join(argv)}\n".encode()
        )
        frames = storage / PurePosixPath(message.output_pattern).parent
        memory = RENDER_MEMORY.bound(message.memory_bytes)
        try:  # the only folder of the node's a sandboxed renderer writes to: it must exist
            frames.mkdir(parents=True, exist_ok=True)
            child = subprocess.Popen(
                SANDBOX.wrap(argv, storage, frames, files),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=starting_with_bound(memory),
                cwd=storage,
                env=renderer_environment(),
            )
        except OSError as error:
            raise RenderFailed(f"cannot start {argv[0]}: {error}") from None
        _running_groups.add(child.pid)
        energy.begin(child.pid)
        counts: ChunkProgress | None = None  # the frames' sample counts, for the studio
        reader: threading.Thread | None = None
        try:
            markers: queue.Queue[Marker | None] = queue.Queue()
            assert child.stdout is not None
            last_output = [started]  # the reader stamps every line it copies
            tail: collections.deque[bytes] = collections.deque(maxlen=QUOTED_LINES)
            samples: Samples | None = getattr(renderer, "samples", None)
            if progress is not None and samples is not None:
                counts = ChunkProgress(progress, message.job_id, message.attempt, node)
            reader = threading.Thread(
                target=_copy_output,
                args=(child.stdout, log, markers, last_output, tail, renderer.progress, warnings),
                kwargs={"samples": samples, "counts": counts, "frames": set(message.frames)},
                daemon=True,
            )
            reader.start()
            last_mark = started
            while True:
                breach = limit_breached(
                    message, time.perf_counter(), started, last_mark, len(reported), last_output[0]
                )
                if breach:
                    stop_process(child, KILL_GRACE_SECONDS)
                    log.write(f"renderfarm: {breach}; the renderer was killed\n".encode())
                    raise RenderFailed(breach)
                if counts is not None:
                    counts.flush()
                try:
                    marker = markers.get(timeout=0.2)
                except queue.Empty:
                    continue
                if marker is None:  # the renderer closed its output: it is exiting
                    break
                frame, seconds, cpu, ext = marker
                now = time.perf_counter()
                if frame in message.frames and frame not in reported:
                    if counts is not None:
                        counts.finish(frame)
                    output = message.output_for(frame) if renderer.writes_frames else None
                    if output is not None and ext is not None:
                        output = str(PurePosixPath(output).with_suffix(ext))
                    report = FrameReport(
                        frame=frame,
                        output=output,
                        render_seconds=seconds if seconds is not None else now - last_mark,
                        cpu_seconds=cpu if cpu is not None else 0.0,
                        output_bytes=output_size(storage, output),
                    )
                    report = reported[frame] = energy.frame(report)
                    try:  # the farm has the frame before it hears of it
                        _send_output(outputs, report, storage)
                    except RenderFailed:
                        stop_process(child, KILL_GRACE_SECONDS)
                        raise
                    emit(chunk_event(FrameEvent, message, node, region, result=report).to_dict())
                last_mark = now
            exit_code = _wait(child, time.perf_counter() + message.timeout)
        finally:
            _running_groups.discard(child.pid)
            if reader is not None:  # its last lines go to the log before the log closes
                reader.join(timeout=READER_JOIN_SECONDS)
            if counts is not None:
                counts.close()
        elapsed = time.perf_counter() - started
        usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_total = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    if exit_code != 0:
        energy.end(cpu_total)
        if memory is not None and ran_out_of_memory(tail):
            raise RenderFailed(out_of_memory_message(memory), exit_code)
        raise RenderFailed(_failure(exit_code, tail), exit_code)
    reports = _complete_reports(message, renderer, reported, elapsed, cpu_total, storage)
    unmarked = [r for r in reports if r.frame not in reported]
    metered = {r.frame: r for r in energy.end(cpu_total, unmarked, last=reports[-1])}
    reports = [metered.get(r.frame, r) for r in reports]
    if renderer.writes_frames:
        sent = set(reported) if outputs is not None else set()  # gone from the node's disk
        missing = [
            r.frame
            for r in reports
            if r.output and r.frame not in sent and not _frame_written(storage, r.output)
        ]
        if missing:
            raise RenderFailed(f"renderer exited 0 but wrote no file for frames {missing}", 0)
        for report in reports:
            if report.frame not in reported:
                _send_output(outputs, report, storage)
    return reports


def _render_in_session(
    message: ChunkMessage,
    storage: Path,
    node: str,
    renderer: OpenJdSessions,
    emit: Emit,
    energy: AttemptMeter,
    region: str,
    progress: Board | None = None,
    files: Path | None = None,
) -> list[FrameReport]:
    """Run the chunk's OpenJD tasks in one session: a frame per task done, as it is done;
    the time limits of the chunk (``limit_breached``) cancel the session. Its actions
    are the worker's children: their energy is the worker's tree's, their CPU time the
    kernel's accounting of waited-for children, task by task. A running task's
    ``openjd_progress`` and ``openjd_status`` lines go to ``progress`` for its frames.
    The job's files (``files``, its manifest laid out) move into the session's root,
    where its actions may read them and its PATH values are mapped to them."""
    try:
        with JOB_USER.claim() as user:
            return _render_session_as(
                user, message, storage, node, renderer, emit, energy, region, progress, files
            )
    except RunAsUnavailable as error:
        raise RenderFailed(f"openjd: {error}") from None


def _render_session_as(
    user: JobUser | None,
    message: ChunkMessage,
    storage: Path,
    node: str,
    renderer: OpenJdSessions,
    emit: Emit,
    energy: AttemptMeter,
    region: str,
    progress: Board | None,
    files: Path | None,
) -> list[FrameReport]:
    """``_render_in_session`` with a job user this session holds (None: the node's)."""
    from workers.openjd_session import SessionCancelled, TaskFailed

    log_path = storage / message.log_path
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        root = renderer.session_root(user)
    except OSError as error:
        raise RenderFailed(f"openjd: {error}") from None
    reported: list[FrameReport] = []
    counts = ChunkProgress(progress, message.job_id, message.attempt, node) if progress else None
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(
            f"renderfarm: node {node} attempt {message.attempt} of chunk {message.chunk_id}, "
            f"tasks {message.frames[0]}..{message.frames[-1]}, in an OpenJD session"
            f"{_run_as_words(user)}\n"
        )
        stamped = _Stamped(log)
        on_status = functools.partial(_count_task, counts) if counts is not None else None
        env = session_environment(other_user=user is not None)
        try:
            job_files = renderer.take_files(files, root, user) if files is not None else None
            session, tasks = renderer.session(
                message, root, stamped, env, on_status, job_files, user
            )
        except OSError as error:
            shutil.rmtree(root, ignore_errors=True)
            raise RenderFailed(f"openjd: the job's files: {error}") from None
        except ValueError as error:
            shutil.rmtree(root, ignore_errors=True)
            raise RenderFailed(f"openjd: {error}") from None
        started = time.perf_counter()
        marks = {"last": started, "cpu": _children_cpu()}
        breach: list[str] = []
        ended = threading.Event()

        def watch() -> None:
            while not ended.wait(0.2):
                if counts is not None:
                    counts.flush()
                why = limit_breached(
                    message, time.perf_counter(), started, marks["last"], len(reported),
                    stamped.last_write,
                )  # fmt: skip
                if why:
                    breach.append(why)
                    log.write(f"renderfarm: {why}; the session was cancelled\n")
                    session.cancel()
                    return

        def done(task: TaskDone) -> None:
            cpu = _children_cpu()
            for report in _task_reports(task, cpu - marks["cpu"], energy):
                reported.append(report)
                if counts is not None:
                    counts.finish(report.frame)
                emit(chunk_event(FrameEvent, message, node, region, result=report).to_dict())
            marks.update(last=time.perf_counter(), cpu=cpu)

        watchdog = threading.Thread(target=watch, daemon=True)
        energy.begin(os.getpid())
        _running_sessions.add(session)
        watchdog.start()
        try:
            session.run(tasks, done)
        except TaskFailed as failure:
            energy.end()
            where = f"task {format_frame_spec(failure.frames)}: " if failure.frames else ""
            raise RenderFailed(f"{where}{failure}") from None
        except SessionCancelled:
            energy.end()
            raise RenderFailed(breach[0] if breach else "the session was cancelled") from None
        finally:
            ended.set()
            _running_sessions.discard(session)
            shutil.rmtree(root, ignore_errors=True)
            if counts is not None:
                watchdog.join(timeout=2 * PROGRESS_TIMEOUT)  # no post after the close
                counts.close()
    metered = {r.frame: r for r in energy.end(None, [], last=reported[-1])}
    return [metered.get(r.frame, r) for r in reported]


def _run_as_words(user: JobUser | None) -> str:
    """For the attempt's log: whom the session's commands run as, if not the node."""
    return f" as {user.name}" if user is not None else ""


def _count_task(counts: ChunkProgress, frames: Sequence[int], status: ActionStatus) -> None:
    """A task's ``openjd_progress`` (a percentage: ``done`` of 100) and ``openjd_status``
    line, as each of its frames' count; an environment's action (no frames) has none."""
    if not frames or (status.progress is None and status.status_message is None):
        return
    percent = status.progress if status.progress is not None else 0.0
    done = round(min(100.0, max(0.0, percent))) if math.isfinite(percent) else 0
    for frame in frames:
        counts.update(frame, done, 100, status.status_message)


# A value that carries a password in a URL (``redis://:secret@host``, ``user:pw@``):
# a broker's or database's address, whatever the variable's name.
URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s@:]*:[^/\s@]+@")
# Who the node's user is: a job user's login sets its own (sudo -i), which these must
# not replace (HOME=/root would leave the user without a home it can write to).
LOGIN_VARIABLES = ("HOME", "USER", "LOGNAME", "SHELL", "MAIL", "PWD", "OLDPWD")


def session_environment(
    environ: Mapping[str, str] | None = None, other_user: bool = False
) -> dict[str, str | None]:
    """What an OpenJD session's actions get: the renderer's environment, less values
    that carry a URL's password; every variable left out is named with None (unset),
    as openjd-sessions starts an action with this process's environment plus these.
    For ``other_user`` (a job user), the node user's login variables are not passed
    on: neither set nor unset, they stay the job user's own."""
    source = os.environ if environ is None else environ
    kept = {
        name: value
        for name, value in renderer_environment(source).items()
        if not URL_PASSWORD.search(value)
    }
    session = {**dict.fromkeys(name for name in source if name not in kept), **kept}
    if other_user:
        for name in [*LOGIN_VARIABLES, *(n for n in source if n.startswith("XDG_"))]:
            session.pop(name, None)
    return session


def _task_reports(task: TaskDone, cpu: float, energy: AttemptMeter) -> list[FrameReport]:
    """A task's frames: one, or a CHUNK[INT]'s run sharing the task's time, CPU and
    energy evenly (the ledger is asked once, for the task)."""
    n = len(task.frames)
    whole = energy.frame(FrameReport(task.frames[0], None, task.seconds, cpu))
    share = None if whole.energy_joules is None else whole.energy_joules / n
    return [
        dataclasses.replace(
            whole,
            frame=frame,
            render_seconds=task.seconds / n,
            cpu_seconds=cpu / n,
            energy_joules=share,
        )
        for frame in task.frames
    ]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _Stamped(io.TextIOBase):
    """A text log that remembers when it was last written to (a session's silence)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.last_write = time.perf_counter()

    def write(self, text: str) -> int:
        self.last_write = time.perf_counter()
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def _frame_written(storage: Path, output: str) -> bool:
    """Whether the renderer wrote the frame's file: False where nothing is there; a
    link (to a node's secret), a FIFO or anything else not a regular file fails the
    attempt, and is removed (in the shared storage the farm would serve it)."""
    try:
        with open_written(storage, output):
            return True
    except OSError:  # not there, or not to be opened: as ``is_file`` answered before
        return False
    except FetchError as error:
        raise RenderFailed(str(error), 0) from None


def _send_output(outputs: Outputs | None, report: FrameReport, storage: Path) -> None:
    """A frame's file back to the farm, on a node without the shared storage."""
    if outputs is None or report.output is None:
        return
    try:
        outputs.send(report.output, storage)
    except (FetchError, OSError, httpx.HTTPError) as error:
        raise RenderFailed(f"frame {report.frame} could not be sent back: {error}") from None


def _complete_reports(
    message: ChunkMessage,
    renderer: ProcessRenderer,
    reported: dict[int, FrameReport],
    elapsed: float,
    cpu_total: float,
    storage: Path,
) -> list[FrameReport]:
    """Every frame's report; frames the renderer did not time share what is left."""
    unmarked = [f for f in message.frames if f not in reported]
    wall_left = max(0.0, elapsed - sum(r.render_seconds for r in reported.values()))
    cpu_marked = sum(r.cpu_seconds for r in reported.values())
    cpu_left = max(0.0, cpu_total - cpu_marked)
    reports = []
    for frame in message.frames:
        if frame in reported:
            reports.append(reported[frame])
            continue
        output = message.output_for(frame) if renderer.writes_frames else None
        reports.append(
            FrameReport(
                frame=frame,
                output=output,
                render_seconds=wall_left / len(unmarked),
                cpu_seconds=cpu_left / len(unmarked),
                output_bytes=output_size(storage, output),
            )
        )
    return reports


def output_size(storage: Path, output: str | None) -> int | None:
    """The size of a frame's file, where it was written (None: no file, or not yet)."""
    if output is None:
        return None
    try:
        return (storage / output).stat().st_size
    except OSError:
        return None


def limit_breached(
    message: ChunkMessage,
    now: float,
    started: float,
    last_mark: float,
    marked: int,
    last_output: float,
) -> str | None:
    """Why the render must be killed now, or None.

    ``message.timeout`` bounds each frame: until the renderer reports a frame, the
    chunk may take that times its frames; once it reports frames, each next frame
    must come within the limit of the last. ``message.stall_timeout`` bounds the
    silence: no line of output for that long is a hung renderer.
    """
    if marked and now - last_mark > message.timeout:
        return f"a frame took longer than the limit of {message.timeout:g} s"
    if not marked and now - started > message.timeout * len(message.frames):
        return (
            f"exceeded the time limit of {message.timeout:g} s per frame "
            f"({message.timeout * len(message.frames):g} s for {len(message.frames)} frame(s))"
        )
    if message.stall_timeout and now - last_output > message.stall_timeout:
        return f"stalled: no output for {message.stall_timeout:g} s"
    return None


def _failure(exit_code: int, tail: collections.deque[bytes]) -> str:
    """Why the renderer failed: how it ended and its last lines that say something."""
    if exit_code < 0:
        try:
            how = f"renderer killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            how = f"renderer killed by signal {-exit_code}"
    else:
        how = f"renderer exited with code {exit_code}"
    if not tail:
        return f"{how}; see the log"
    quoted = " | ".join(line.decode(errors="replace").strip()[:300] for line in tail)
    return f"{how}: {quoted}"


def _copy_output(
    stream: IO[bytes],
    log: IO[bytes],
    markers: queue.Queue[Marker | None],
    last_output: list[float],
    tail: collections.deque[bytes] | None = None,
    progress: re.Pattern[bytes] | None = None,
    warnings: list[str] | None = None,
    samples: Samples | None = None,
    counts: ChunkProgress | None = None,
    frames: set[int] | None = None,
) -> None:
    """Copy the renderer's output to the log, reading its lines as they pass: frame
    lines become markers, warnings are kept, progress lines (``progress``) update the
    frames' sample ``counts`` (read by ``samples``; of the chunk's ``frames`` only),
    and the last other lines are kept in ``tail``."""
    try:
        for line in iter(stream.readline, b""):
            last_output[0] = time.perf_counter()
            log.write(line)
            warned = WARNING_LINE.match(line)
            if warned and warnings is not None and len(warnings) < MAX_WARNINGS:
                warnings.append(warned.group(1).decode(errors="replace").strip()[:500])
            match = FRAME_LINE.match(line)
            if match:
                seconds, cpu, ext = match.group(2), match.group(3), match.group(4)
                markers.put(
                    (
                        int(match.group(1)),
                        float(seconds) if seconds else None,
                        float(cpu) if cpu else None,
                        ext.decode() if ext else None,
                    )
                )
            elif progress is not None and progress.match(line):
                counted = samples(line) if samples is not None and counts is not None else None
                if counted is not None and counts is not None and counted[0] in (frames or ()):
                    counts.update(*counted)
            elif tail is not None and line.strip():
                tail.append(line)
    finally:
        markers.put(None)


def _wait(child: subprocess.Popen[bytes], deadline: float) -> int:
    try:
        return child.wait(timeout=max(0.1, deadline - time.perf_counter()))
    except subprocess.TimeoutExpired:
        stop_process(child, KILL_GRACE_SECONDS)
        raise RenderFailed("renderer closed its output but did not exit in time") from None


def install_termination_handler() -> None:
    """On SIGTERM (Celery's revoke with terminate), kill running renderers at once, then
    let the process end as it would have: by the handler found (billiard's, which
    runs the pool process's ``finally`` blocks), else by exiting.

    Idempotent, and called at the start of every render task: billiard installs its
    own SIGTERM handler after the pool process's init signals (``worker_process_init``),
    so one installed there never ran, and a revoked render went on writing frames
    until its reader gave up on it.
    """
    found = signal.getsignal(signal.SIGTERM)
    if getattr(found, "kills_renderers", False):
        return

    def _terminate(signum: int, frame: Any) -> None:
        kill_groups(list(_running_groups), signal.SIGKILL)
        if _running_sessions:  # their actions are this worker's children, in groups of their own
            for child in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
        if callable(found):
            found(signum, frame)
        os._exit(128 + signum)

    _terminate.kills_renderers = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, _terminate)
