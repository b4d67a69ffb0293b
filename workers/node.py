"""A render node as a Celery worker: the render task, the heartbeat, and how to start it.

The task body is a few lines: decode the message, run the chunk (workers/runner.py),
publish its events. The heartbeat runs in the worker's main process, where Celery
knows which requests are active, and tells the scheduler every few seconds that the
node lives, its pool, region, slots and hardware, its power, and which attempts it is
running. The energy ledger (workers/energy.py) runs in the main process too, and the
render slots reach it over a Unix socket. Blender is looked for once, as the node
starts (``equip_blender``): the render slots, forked from the main process, render with
the one it found, and the node advertises its ``blender-<major>.<minor>`` tag. The
renderers' sandbox is decided then too (``equip_sandbox``, workers/sandbox.py), and
whom OpenJD templates' commands run as (``equip_run_as``, workers/job_user.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import platform
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from celery import Celery, signals
from celery.worker import state as worker_state

from scheduler.core.bounds import NAME_MAX, POOL_MAX
from scheduler.core.placement import CPU_ARCH, GPU_MEMORY_MIB, OS_FAMILY
from scheduler.settings import Settings
from scheduler.wire.broker import HAND_BACK_RETRY, CeleryBroker, queue_entity
from scheduler.wire.celery_app import answer_active_readably, make_celery
from scheduler.wire.events import EventPublisher
from scheduler.wire.messages import (
    BUNDLE_MAX,
    RENDER_CHUNKS_TASK,
    RENDER_TASK,
    ChunkMessage,
    HeartbeatEvent,
    NodeLife,
    NodeReport,
    attempt_task_ids,
    node_queue,
)
from scheduler.wire.progress import ProgressBoard
from scheduler.wire.storage import open_storage
from workers.assets import job_files
from workers.energy import EnergyLedger, LedgerServer
from workers.job_user import equip_job_user
from workers.memory import RENDER_MEMORY
from workers.meters import choose_meter, gpu_memory_mib, node_power_figures
from workers.renderers import BLENDER
from workers.renderers.blender import find_blender
from workers.runner import install_termination_handler, run_message, run_messages
from workers.sandbox import SANDBOX, credential_paths, find_sandbox, runtime_paths

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    pool: str
    slots: int
    tags: list[str] = field(default_factory=list)
    gpus: int = 0
    region: str = "guizhou"
    # OpenJD capabilities beyond the standard amounts (``capabilities``): what the
    # operator gave (--amount, --attr) over what was detected.
    amounts: dict[str, float] = field(default_factory=dict)
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:  # as the scheduler reads reports (scheduler/wire)
        for what, value, most in (("name", self.name, NAME_MAX), ("pool", self.pool, POOL_MAX)):
            if not 0 < len(value) <= most:
                raise ValueError(f"a node's {what} has 1 to {most} characters, not {len(value)}")

    def report(self, running: int, ledger: EnergyLedger | None = None) -> NodeReport:
        return NodeReport(
            name=self.name,
            pool=self.pool,
            hostname=socket.gethostname(),
            slots=self.slots,
            running=running,
            cores=psutil.cpu_count() or 1,
            memory_bytes=psutil.virtual_memory().total,
            gpus=self.gpus,
            tags=list(self.tags),
            region=self.region,
            energy_method=ledger.method if ledger else None,
            power_watts=ledger.power_watts if ledger else 0.0,
            capabilities={"amounts": dict(self.amounts), "attributes": dict(self.attributes)},
            bundle=BUNDLE_MAX,  # it has render_chunks
        )


OS_FAMILIES = {"linux": "linux", "windows": "windows", "darwin": "macos"}
CPU_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def detect_capabilities(gpus: int) -> tuple[dict[str, float], dict[str, list[str]]]:
    """OpenJD's standard capabilities of this host that its heartbeat does not carry
    already (cores, memory and GPUs it does): the GPUs' memory, the OS family and the
    CPU architecture, in OpenJD's words."""
    amounts: dict[str, float] = {}
    if gpus:
        amounts[GPU_MEMORY_MIB] = gpu_memory_mib()
    system, machine = platform.system().lower(), platform.machine().lower()
    attributes = {
        OS_FAMILY: [OS_FAMILIES.get(system, system)],
        CPU_ARCH: [CPU_ARCHES.get(machine, machine)],
    }
    return amounts, attributes


_CAPABILITY = re.compile(r"(?:attr|amount)(?:\.[A-Za-z_][A-Za-z0-9_-]*)+")


def operator_capabilities(
    attrs: list[str], amounts: list[str]
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """``--amount NAME=N`` and ``--attr NAME=VALUE`` (repeated for several values) as
    capabilities; a NAME without OpenJD's ``amount.``/``attr.`` prefix gets it.
    ``ValueError`` says which one does not read."""
    given_amounts: dict[str, float] = {}
    for text in amounts:
        name, value = _named(text, "amount")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--amount {text}: {value!r} is not a number") from None
        if not 0 <= number < float("inf"):
            raise ValueError(f"--amount {text}: an amount is a number >= 0")
        given_amounts[name] = number
    given_attributes: dict[str, list[str]] = {}
    for text in attrs:
        name, value = _named(text, "attr")
        if not value.strip():
            raise ValueError(f"--attr {text}: give a value, NAME=VALUE")
        given_attributes.setdefault(name, []).append(value.strip())
    return given_amounts, given_attributes


def _named(text: str, prefix: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    name = name.strip()
    other = "attr" if prefix == "amount" else "amount"
    if name.startswith(other + "."):
        raise ValueError(f"--{prefix} {text}: {name} is an {other}: give it with --{other}")
    if not name.startswith(prefix + "."):
        name = f"{prefix}.{name}"
    if not equals or not _CAPABILITY.fullmatch(name) or not name.startswith(prefix + "."):
        raise ValueError(
            f"--{prefix} {text}: write NAME=VALUE, NAME like {prefix}.studio.licences "
            "(letters, digits, _ and - between dots)"
        )
    return name, value


def with_capabilities(
    node: NodeConfig, amounts: dict[str, float], attributes: dict[str, list[str]]
) -> NodeConfig:
    """The node with what was detected, under what the operator gave."""
    found_amounts, found_attributes = detect_capabilities(node.gpus)
    return dataclasses.replace(
        node,
        amounts={**found_amounts, **amounts},
        attributes={**found_attributes, **attributes},
    )


def equip_blender(settings: Settings, node: NodeConfig) -> NodeConfig:
    """Find this node's Blender (``BlenderUnavailable`` if the one configured does not
    run), render with it, and return the node with its ``blender-X.Y`` tag added."""
    blender = find_blender(settings.blender)
    BLENDER.use(blender)
    if blender is None:
        log.info("blender: none on this node; it refuses blender chunks")
        return node
    log.info("blender: %s", blender.describe())
    if blender.tag in node.tags:
        return node
    return dataclasses.replace(node, tags=[*node.tags, blender.tag])


def cache_root(settings: Settings, node: NodeConfig) -> Path:
    """The node's own file cache (the contents of every studio's jobs it rendered)."""
    return settings.node_cache or settings.data_dir.resolve() / "node-cache" / node.name


def equip_memory(settings: Settings, node: NodeConfig) -> None:
    """Each renderer's memory bound where its job gives none (workers/memory.py): the
    operator's, else the node's memory shared evenly by its slots."""
    default = settings.render_memory_bytes or psutil.virtual_memory().total // node.slots
    RENDER_MEMORY.use(default)
    log.info("renderers may take %.1f GiB each unless their job says", default / 2**30)


def equip_sandbox(settings: Settings, node: NodeConfig) -> None:
    """Decide the renderers' sandbox (``SandboxUnavailable`` if ``bwrap`` is required and
    does not run). Out of their sight: the node's cache, its data folder (the embedded
    farm's database), a ``.env`` beside it (its node token), a broker's Unix socket,
    and the node user's credentials: their home folder, or where renderers run from
    inside it, the credentials in it; and the files ``AWS_SHARED_CREDENTIALS_FILE``...
    name."""
    hidden = [cache_root(settings, node), settings.data_dir, Path(".env")]
    broker = settings.effective_broker_url
    if broker.startswith("redis+socket://"):
        hidden.append(Path(broker.removeprefix("redis+socket://")))
    blender = BLENDER.blender
    runtime = [blender.executable] if blender is not None and blender.executable else []
    hidden += credential_paths(Path.home(), runtime_paths(runtime), os.environ)
    SANDBOX.use(find_sandbox(settings.sandbox, hidden, runtime))


def equip_run_as(settings: Settings, node: NodeConfig) -> None:
    """Whom OpenJD templates' commands run as (``RunAsUnavailable`` if the node cannot
    run them as ``settings.run_as``, or its own files are open to that user): its data
    folder, storage root and cache, the ``.env`` beside it, a broker's Unix socket."""
    files = [Path(".env")]
    broker = settings.effective_broker_url
    if broker.startswith("redis+socket://"):
        files.append(Path(broker.removeprefix("redis+socket://")))
    folders = [settings.data_dir, settings.storage_root, cache_root(settings, node)]
    equip_job_user(settings.run_as, folders, files, node.slots)


def make_worker_app(settings: Settings, node: NodeConfig) -> Celery:
    node = equip_blender(settings, node)
    equip_sandbox(settings, node)
    equip_run_as(settings, node)
    equip_memory(settings, node)
    app = make_celery(settings, main=f"renderfarm-node-{node.name}")
    answer_active_readably()  # `celery inspect active` shows "job 12 chunk 345 ..."
    app.conf.task_queues = [queue_entity(node_queue(node.name))]
    storage = settings.storage_root
    events = EventPublisher(settings.effective_broker_url)
    server = make_ledger_server(settings, node)
    meter = server.client() if server else None
    token = settings.node_token.get_secret_value() if settings.node_token else None
    files = job_files(
        open_storage(settings),
        cache_root(settings, node),
        settings.node_cache_bytes,
        settings.api_url,
        token,
    )  # the API's files with the node token, else the shared storage

    progress = ProgressBoard(settings.effective_broker_url)  # frames' samples, for display

    @app.task(name=RENDER_TASK, acks_late=True, reject_on_worker_lost=True)
    def render_chunk(message: dict[str, Any]) -> bool:
        install_termination_handler()  # a revoke kills the renderer, not only this process
        publish = lambda event: events.publish([event])  # noqa: E731
        return run_message(
            message, storage, node.name, publish, meter, node.region, files, progress=progress
        )

    sender = CeleryBroker(app)  # a slow bundle hands its chunks back to this node's queue

    def hand_back(data: dict[str, Any]) -> None:
        sender.send([[ChunkMessage.from_dict(data)]], HAND_BACK_RETRY)

    @app.task(name=RENDER_CHUNKS_TASK, acks_late=True, reject_on_worker_lost=True)
    def render_chunks(messages: list[dict[str, Any]]) -> int:
        """Chunks that render in milliseconds, several to a message (wire/messages.py)."""
        install_termination_handler()
        return run_messages(
            messages, storage, node.name, events.publish, meter, node.region, files, progress,
            hand_back,
        )  # fmt: skip

    heartbeat = Heartbeat(
        # Its own publisher, which gives up within seconds: a beat lost in an outage is
        # followed by the next, and a drain or a last word must not wait an hour for one.
        EventPublisher(
            settings.effective_broker_url,
            max_wait=HEARTBEAT_PUBLISH_SECONDS,
            socket_timeout=HEARTBEAT_PUBLISH_SECONDS / 2,  # a link cut: no answer at all
        ),
        node,
        settings.heartbeat_seconds,
        server.ledger if server else None,
        settings.drain_seconds,
    )
    if server is not None:  # before the heartbeat: its first beat reports the meter
        signals.worker_ready.connect(server.start, weak=False)
        signals.worker_shutdown.connect(server.stop, weak=False)
    signals.worker_ready.connect(heartbeat.start, weak=False)
    signals.worker_shutting_down.connect(heartbeat.leave, weak=False)
    signals.worker_shutdown.connect(heartbeat.stop, weak=False)
    return app


def make_ledger_server(settings: Settings, node: NodeConfig) -> LedgerServer | None:
    """The node's energy ledger, with the meter this node has; None if metering is off."""
    if settings.energy_meter == "off":
        return None
    idle, peak = node_power_figures(settings.idle_watts, settings.max_watts)
    meter = choose_meter(idle, peak, settings.energy_meter)
    ledger = EnergyLedger(meter, idle, node.slots, {"pool": node.pool, "region": node.region})
    log.info("energy: metering by %s, idle %.0f W over %d slots", meter.method, idle, node.slots)
    return LedgerServer(ledger, settings.energy_sample_seconds)


HEARTBEAT_PUBLISH_SECONDS = 10.0  # how long a heartbeat may wait for the broker


class Heartbeat:
    """The node's heartbeat, every ``every`` s on its own thread, and its word on going.

    Told to stop (SIGTERM: Kubernetes scaling a pool down, systemd, Ctrl-C), Celery stops
    taking messages and waits for the chunks running; the next beat, at once, says
    "leaving", and the scheduler sends the chunks still waiting in the node's queue
    elsewhere. Chunks still running after ``drain`` s are handed back: the node says
    "left" (the scheduler queues again, at once, all it thought the node held), then
    ends their pool processes, whose renderers die with them. A node whose chunks all
    finish says "left" as its worker ends. Either way nothing waits for the node timeout.
    """

    def __init__(
        self,
        events: EventPublisher,
        node: NodeConfig,
        every: float,
        ledger: EnergyLedger | None = None,
        drain: float = 20.0,
    ) -> None:
        self.events = events
        self.node = node
        self.every = every
        self.ledger = ledger
        self.drain = drain
        self.life = NodeLife.ONLINE
        self._hand_back_at = math.inf  # when a leaving node hands back what still renders
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, **_: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()

    def leave(self, **_: Any) -> None:
        """Celery's ``worker_shutting_down``, in its signal handler: it only notes the
        time and wakes the heartbeat thread, which says so and hands back what is left."""
        if self.life != NodeLife.ONLINE:
            return  # a second signal: Celery's cold shutdown follows
        self._hand_back_at = time.monotonic() + self.drain
        self.life = NodeLife.LEAVING
        self._wake.set()

    def stop(self, **_: Any) -> None:
        """Celery's ``worker_shutdown``: the pool has ended; the node's last word."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.every + 1.0)
        if self.life != NodeLife.ONLINE:  # stopped by a signal, not by a broken start
            self._say_left()

    def beat(self) -> None:
        # Reserved includes received-but-not-started: a task appears there before its
        # render starts and leaves only after its last event was published.
        # A bundle's task id stands for each attempt it carries (wire/messages.py).
        holding = {t for r in list(worker_state.reserved_requests) for t in attempt_task_ids(r.id)}
        running = {t for r in list(worker_state.active_requests) for t in attempt_task_ids(r.id)}
        report = self.node.report(len(worker_state.active_requests), self.ledger)
        beat = HeartbeatEvent(
            node=self.node.name,
            info=report,
            tasks=sorted(holding | running),
            at=time.time(),
            life=self.life,
        )
        self.events.publish([beat.to_dict()])

    def _say_left(self) -> None:
        self.life = NodeLife.LEFT
        report = self.node.report(0, self.ledger)
        beat = HeartbeatEvent(node=self.node.name, info=report, tasks=[], at=time.time(),
                              life=NodeLife.LEFT)  # fmt: skip
        try:
            self.events.publish([beat.to_dict()])
        except Exception:  # the broker is away: the node timeout will tell instead
            log.exception("could not say the node left")

    def _hand_back(self) -> None:
        """The drain ran out: say "left" (first: the events of the renders ended below
        are then stale), then end the pool processes still rendering; their SIGTERM
        handler kills the renderers (runner.py)."""
        processes = {r.worker_pid for r in list(worker_state.active_requests) if r.worker_pid}
        if processes:
            log.warning("handing back %d chunk(s) still rendering after %.0f s",
                        len(processes), self.drain)  # fmt: skip
        self._say_left()
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.every
            try:
                if self.life == NodeLife.LEAVING and time.monotonic() >= self._hand_back_at:
                    self._hand_back()
                elif self.life != NodeLife.LEFT:
                    self.beat()
            except Exception:  # the broker is away: keep trying, never die
                log.exception("heartbeat failed")
            if self.life == NodeLife.LEAVING:
                wait = max(0.0, min(wait, self._hand_back_at - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()


def start_worker(
    settings: Settings, node: NodeConfig, loglevel: str = "INFO", events: bool = False
) -> None:
    """Run the worker in this process until it is told to stop (blocks).

    ``events``: send Celery task events (received, started, succeeded...) for Flower
    and ``celery events``; off by default, as they cost throughput (BENCHMARKS.md).
    """
    app = make_worker_app(settings, node)
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    quiet_per_task_lines(loglevel)
    app.worker_main(
        [
            "worker",
            f"--hostname={node.name}@{socket.gethostname()}",
            f"--concurrency={node.slots}",
            "--pool=prefork",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
            *(["--task-events"] if events else []),
        ]
    )


# Celery logs each task received and succeeded at INFO: two lines per chunk, which at
# hundreds of short chunks a second is the bulk of a node's log and ~0.15 ms of its CPU
# per chunk, telling what the farm's attempts record anyway (which node, when, how it
# ended: `renderfarm job show`, the API). Failures and the node's own life still log.
PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


def quiet_per_task_lines(loglevel: str) -> None:
    """Celery's per-task lines show only when the node logs at DEBUG."""
    if logging.getLevelName(loglevel.upper()) != logging.DEBUG:
        for name in PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
