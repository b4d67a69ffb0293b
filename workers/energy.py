"""The node's energy ledger: one meter, every running attempt, every frame's joules.

The ledger lives in the worker's main process, the one place that sees every render
slot. It reads the node's meter about once a second, and again at every frame
boundary, and shares each interval's joules between the attempts then running by
their CPU time (``scheduler.core.energy.attribute_interval``). A frame's energy is
what its attempt accumulated since the attempt's previous frame, so the frames of a
node, plus the idle energy no frame carries, add up to the meter.

Renders run in Celery's prefork children; they reach the ledger over a Unix socket
(``LedgerClient``): ``begin`` once a render has run ``RESOLUTION_SECONDS`` (sent
without waiting for an answer: none comes), ``frame`` when the renderer reports a
frame, ``end`` when it exits; ``brief`` (no answer either, sent for a slot's brief
frames together each half second) for renders that ended before they began in the
ledger, whose frames carry 0 J. A slot's requests are served
in order, so its ``begin`` is in the ledger before its ``end`` is answered. Every
Prometheus metric of the node is set here, in the main process, so prefork needs no
multiprocess mode for them.

A ``begin`` within ``RESOLUTION_SECONDS`` of the last reading reads nothing (a busy
node's slots start renders close together, and each reading costs the meter and every
running render's ``/proc``): the attempt takes its share of the interval by its CPU
time since it began, so nothing shifts. A ``frame`` or ``end`` always reads.

If the ledger cannot be reached, frames are still rendered and reported, without
energy: a bill is never made up.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import psutil

from scheduler.core.energy import attribute_interval, split_evenly
from workers import metrics
from workers.later import LATER
from workers.meters import Meter

log = logging.getLogger(__name__)

CpuReader = Callable[[int], float | None]
REPLY_TIMEOUT_SECONDS = 5.0
UNANSWERED = ("begin", "brief")  # requests the ledger takes without an answer
BRIEF_EVERY_SECONDS = 0.5  # brief frames are sent together


class ProcessTreeCpu:
    """CPU seconds of a process and its descendants, living and reaped; None once it is gone.

    Finding a process's descendants reads every process of the host (about a
    millisecond per hundred processes), so the list is found again only every
    ``refresh_seconds``; in between, each sample reads the known processes alone. A
    descendant started since is counted from the next refresh, or through its parent's
    reaped-children time once it exits: the shares of an interval shift, none is lost.
    """

    def __init__(
        self, refresh_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._trees: dict[int, tuple[psutil.Process, list[psutil.Process], float]] = {}

    def __call__(self, pid: int) -> float | None:
        now = self.clock()
        tree = self._trees.get(pid)
        try:
            if tree is None:  # a render just starting: no descendants yet
                tree = (psutil.Process(pid), [], now)
            elif now - tree[2] > self.refresh_seconds:
                tree = (tree[0], tree[0].children(recursive=True), now)
            self._trees[pid] = tree
            times = tree[0].cpu_times()
        except psutil.Error:
            self._trees.pop(pid, None)
            return None
        total = times.user + times.system + times.children_user + times.children_system
        for child in tree[1]:
            try:
                child_times = child.cpu_times()
            except psutil.Error:
                continue  # exited: its time is in its parent's reaped-children time
            total += child_times.user + child_times.system
        return total

    def forget(self, pid: int) -> None:
        self._trees.pop(pid, None)


# An attempt whose process vanished without its end being told (its render slot was
# killed) stops taking a share after this long.
VANISHED_AFTER_SECONDS = 10.0
# A begin this close to the last reading shares it; attempts shorter than this never
# enter the ledger (workers/runner.py): its resolution.
RESOLUTION_SECONDS = 0.01


@dataclass
class _Running:
    pid: int
    cpu_seen: float
    joules: float = 0.0  # accumulated since the attempt's last frame
    gone_since: float | None = None


class EnergyLedger:
    """Shares the meter's joules between running attempts. Thread-safe."""

    def __init__(
        self,
        meter: Meter,
        idle_watts: float,
        slots: int,
        labels: dict[str, str] | None = None,
        cpu_of: CpuReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.meter = meter
        self.method = meter.method
        self.idle_watts = idle_watts
        self.slots = slots
        self.cpu_of: CpuReader = cpu_of or ProcessTreeCpu()
        self.clock = clock
        self.labels = labels or {"pool": "", "region": ""}
        # The metrics' labelled children, found once (a lookup costs more than a sample).
        labelled = {**self.labels, "method": self.method}
        self._power = metrics.WORKER_POWER.labels(**labelled)
        self._energy = metrics.WORKER_ENERGY.labels(**labelled)
        self._unattributed = metrics.WORKER_UNATTRIBUTED.labels(**labelled)
        self._busy = metrics.WORKER_SLOTS_BUSY.labels(**self.labels)
        self.frames = metrics.WORKER_FRAMES.labels(**labelled)
        self.frame_energy = metrics.WORKER_FRAME_ENERGY.labels(**labelled)
        self.frame_seconds = metrics.WORKER_FRAME_SECONDS.labels(**self.labels)
        self._lock = threading.Lock()
        self._running: dict[Hashable, _Running] = {}
        self._metered = meter.read()
        self._at = clock()
        self.power_watts = 0.0
        self.total_joules = 0.0
        self.unattributed_joules = 0.0

    @property
    def running(self) -> int:
        """How many attempts the ledger counts as running."""
        return len(self._running)

    def begin(self, key: Hashable, pid: int) -> None:
        with self._lock:
            self._sample({}, boundary=True)
            self._running[key] = _Running(pid, self.cpu_of(pid) or 0.0)
            self._set_busy()

    def frame(self, key: Hashable) -> float | None:
        """The joules of the attempt's frame that just finished (since its last one)."""
        with self._lock:
            self._sample({})
            running = self._running.get(key)
            if running is None:
                return None
            joules, running.joules = running.joules, 0.0
            return joules

    def end(self, key: Hashable, cpu_total: float | None = None) -> float | None:
        """The joules the attempt accumulated since its last frame; it runs no more.

        ``cpu_total``: the render's CPU seconds by the kernel's account, for a renderer
        that has exited and been reaped (so it can no longer be read).
        """
        with self._lock:
            if key not in self._running:
                return None
            self._sample({key: cpu_total} if cpu_total is not None else {})
            ended = self._running.pop(key)
            forget = getattr(self.cpu_of, "forget", None)
            if forget is not None:
                forget(ended.pid)
            self._set_busy()
            return ended.joules

    def sample(self) -> None:
        with self._lock:
            self._sample({})

    def _sample(self, final_cpu: dict[Hashable, float], boundary: bool = False) -> None:
        now = self.clock()
        if boundary and now - self._at < RESOLUTION_SECONDS:
            return  # the last reading stands for this beginning too
        metered = self.meter.read()
        joules, seconds = metered - self._metered, now - self._at
        self._metered, self._at = metered, now
        used: dict[Hashable, float] = {}
        for key, running in list(self._running.items()):
            cpu = final_cpu.get(key)
            if cpu is None:
                cpu = self.cpu_of(running.pid)
            if cpu is None:  # gone before its end was told: no more CPU to count
                cpu = running.cpu_seen
                running.gone_since = running.gone_since or now
                if now - running.gone_since > VANISHED_AFTER_SECONDS:
                    log.warning("energy: attempt %s vanished without ending", key)
                    del self._running[key]
                    self._set_busy()
                    continue
            used[key] = cpu - running.cpu_seen
            running.cpu_seen = max(running.cpu_seen, cpu)
        split = attribute_interval(joules, seconds, self.idle_watts, self.slots, used)
        for key, share in split.shares.items():
            self._running[key].joules += share
        self.total_joules += joules
        self.unattributed_joules += split.unattributed
        if seconds >= 0.5:  # a short interval between two frames says little about power
            self.power_watts = joules / seconds
            self._power.set(self.power_watts)
        self._energy.inc(joules)
        self._unattributed.inc(split.unattributed)

    def _set_busy(self) -> None:
        self._busy.set(len(self._running))


def observe_frames(ledger: EnergyLedger, joules: list[float], render_seconds: list[float]) -> None:
    for spent, seconds in zip(joules, render_seconds, strict=True):
        ledger.frames.inc()
        ledger.frame_energy.observe(spent)
        ledger.frame_seconds.observe(seconds)


class LedgerServer:
    """Serves the ledger to the prefork children and samples it every ``every`` seconds."""

    def __init__(self, ledger: EnergyLedger, every: float = 1.0) -> None:
        self.ledger = ledger
        self.every = every
        self._folder = Path(tempfile.mkdtemp(prefix="renderfarm-ledger-"))
        self.address = str(self._folder / "ledger.sock")
        self.authkey = secrets.token_bytes(16)
        self._listener = Listener(self.address, family="AF_UNIX", authkey=self.authkey)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, **_: Any) -> None:
        if self._threads:
            return
        for target, name in ((self._accept, "ledger-accept"), (self._tick, "ledger-tick")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, **_: Any) -> None:
        self._stop.set()
        try:
            self._listener.close()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)

    def client(self) -> LedgerClient:
        return LedgerClient(self.address, self.authkey, self.ledger.method)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.ledger.sample()
            except Exception:
                log.exception("energy: sampling the meter failed")

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection = self._listener.accept()
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("energy: a render slot could not connect")
                continue
            threading.Thread(
                target=self._serve, args=(connection,), name="ledger-slot", daemon=True
            ).start()

    def _serve(self, connection: Connection) -> None:
        with connection:
            while True:
                try:
                    request = connection.recv()
                except (EOFError, OSError):
                    return
                try:
                    answer = self._answer(request)
                except Exception as error:
                    log.exception("energy: bad ledger request %r", request)
                    answer = error
                if request[0] in UNANSWERED:
                    continue
                try:
                    connection.send(answer)
                except OSError:  # the render slot went away
                    return

    def _answer(self, request: tuple[Any, ...]) -> Any:
        verb, key, *args = request
        ledger = self.ledger
        if verb == "begin":
            ledger.begin(key, int(args[0]))
            return None
        if verb == "brief":
            render_seconds = [float(seconds) for seconds in args[0]]
            observe_frames(ledger, [0.0] * len(render_seconds), render_seconds)
            return None
        if verb == "frame":
            joules = ledger.frame(key)
            if joules is not None:
                observe_frames(ledger, [joules], [float(args[0])])
            return joules
        if verb == "end":
            cpu_total, render_seconds = args
            left = ledger.end(key, cpu_total)
            if left is None:
                return None
            shares = split_evenly(left, len(render_seconds))
            observe_frames(ledger, shares, render_seconds)
            return left, shares
        raise ValueError(f"unknown ledger request {verb!r}")


class LedgerClient:
    """A render slot's line to the ledger; answers None for energy it could not get."""

    def __init__(self, address: str, authkey: bytes, method: str) -> None:
        self.address = address
        self.authkey = authkey
        self.method = method
        self._connection: Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()  # one question and its answer at a time
        self._briefs: list[float] = []  # render seconds of brief frames, not yet sent

    def begin(self, key: Hashable, pid: int) -> None:
        self._ask(("begin", key, pid), answered=False)

    def brief(self, render_seconds: list[float]) -> None:
        """Frames of a render too short to enter the ledger: counted, with 0 J, in the
        ledger's metrics within ``BRIEF_EVERY_SECONDS`` (sent together: a message per
        no-op chunk woke the ledger in the worker's busy main process each time)."""
        if not render_seconds:
            return
        with self._lock:
            self._briefs.extend(render_seconds)
            if len(self._briefs) > len(render_seconds):
                return  # a send is due already
        LATER.call(BRIEF_EVERY_SECONDS, self._send_briefs)

    def _send_briefs(self) -> None:
        with self._lock:
            briefs, self._briefs = self._briefs, []
            if briefs:
                self._ask_now(("brief", None, briefs), answered=False)

    def frame(self, key: Hashable, render_seconds: float) -> float | None:
        answer = self._ask(("frame", key, render_seconds))
        return float(answer) if isinstance(answer, int | float) else None

    def end(
        self, key: Hashable, cpu_total: float | None, render_seconds: list[float]
    ) -> tuple[float, list[float]] | None:
        """What the attempt used since its last frame, and each unmarked frame's share."""
        answer = self._ask(("end", key, cpu_total, render_seconds))
        if not isinstance(answer, tuple):
            return None
        left, shares = answer
        return float(left), [float(j) for j in shares]

    def _ask(self, request: tuple[Any, ...], answered: bool = True) -> Any:
        with self._lock:
            return self._ask_now(request, answered)

    def _ask_now(self, request: tuple[Any, ...], answered: bool) -> Any:
        try:
            if self._connection is None or self._pid != os.getpid():  # forked: own line
                self._connection = Client(self.address, family="AF_UNIX", authkey=self.authkey)
                self._pid = os.getpid()
            self._connection.send(request)
            if not answered:
                return None
            if not self._connection.poll(REPLY_TIMEOUT_SECONDS):
                raise TimeoutError("the energy ledger did not answer")
            answer = self._connection.recv()
        except (OSError, EOFError, TimeoutError) as error:
            log.warning("energy: ledger unreachable (%s); frames go without energy", error)
            if self._connection is not None:
                self._connection.close()  # a late answer must not meet the next question
            self._connection = None
            return None
        if isinstance(answer, Exception):
            log.warning("energy: the ledger refused %r: %s", request[0], answer)
            return None
        return answer
