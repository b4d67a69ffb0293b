"""What travels between the scheduler and the render nodes, as plain JSON dicts.

Scheduler -> node: a ``ChunkMessage``, the only argument of the Celery task
``renderfarm.render_chunk``. It carries everything needed to render (the node never
reads the database): chunk id, attempt number, frames, renderer and settings, the
paths relative to the storage root, and the time limit; and the envelope version
``"v": 1``. A node that cannot read a message (another version, a missing or
mistyped field) fails that attempt with ``MessageError``'s words, so the scheduler
shows why instead of sending it again and again.

Chunks that render in milliseconds travel several to a message: the Celery task
``renderfarm.render_chunks`` takes a list of chunk messages, all for one node, and
renders them one after another in one slot (each its own attempt, with its own
events). Its task id names every attempt it carries (``bundle_task_id``), so a node's
heartbeat lists them one by one (``attempt_task_ids``). Celery's cost is per message,
not per chunk: a message carrying eight chunks costs a node little more than one
carrying one (BENCHMARKS.md, issue 14).

Node -> scheduler: typed events, one class per kind, sent as JSON objects on the
Redis list ``renderfarm:events`` (scheduler/wire/events.py). The node builds an event
and sends ``event.to_dict()``; the scheduler reads what it fetched with
``decode_event``. Every event carries the envelope ``{"v": 1, "kind": ...}``. Chunk
events are keyed by (chunk id, attempt) so that ingesting one twice, or one from a
superseded attempt, changes nothing; they all carry ``chunk_id``, ``attempt``,
``job_id``, ``node``, the node's ``region`` (where its frames are billed) and ``at``.

- ``started``   StartedEvent: the attempt began on ``node``;
- ``frame``     FrameEvent: one frame is written: ``result`` = FrameReport;
- ``finished``  FinishedEvent: the attempt succeeded: ``results`` = every frame's
                FrameReport, ``started_at``, ``exit_code``, ``warnings``;
- ``failed``    FailedEvent: the attempt failed: ``error``, ``exit_code``,
                ``energy_joules``, ``started_at``, ``warnings``;
- ``heartbeat`` HeartbeatEvent: a node is alive: ``info`` = NodeReport, ``tasks`` (the
                Celery task ids it holds), ``at`` (no chunk, no attempt).

Versions: ``decode_event`` reads v1 (and an event without ``"v"``, the format nodes
sent before events were versioned, which v1 kept field for field). Anything else
raises ``EventError``, whose message says what is wrong (an unknown kind, another
version: "the node speaks v2, this scheduler v1", a missing or mistyped field), so a
node and a scheduler of different versions fail loudly instead of misreading each
other. Fields this version does not know are ignored: adding an optional field needs
no new version; changing or removing one does. A malformed frame report inside a
``finished`` event is left out (logged), not the whole event: the scheduler then
fails the attempt, since frames without a result would never be rendered. An
impossible energy figure (negative, not finite, not a number) is dropped, not the
frame.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from enum import StrEnum
from typing import Any, ClassVar

from scheduler.core.bounds import HOSTNAME_MAX, METHOD_MAX, NAME_MAX, POOL_MAX, text_problem

RENDER_TASK = "renderfarm.render_chunk"
RENDER_CHUNKS_TASK = "renderfarm.render_chunks"  # several chunk messages, one slot
MESSAGE_VERSION = 1
BUNDLE_MAX = 16  # chunk messages in one Celery message, at most


class MessageError(ValueError):
    """A chunk message this node cannot read; ``str(error)`` says what was wrong."""


def node_queue(node: str) -> str:
    return f"node.{node}"


def task_id_for(chunk_id: int, attempt: int) -> str:
    """Celery task ids are derived, so the scheduler can revoke an attempt by id alone."""
    return f"chunk-{chunk_id}-attempt-{attempt}"


_BUNDLE = "chunks-"  # a bundle's task id: chunks-<chunk>.<attempt>+<chunk>.<attempt>...


def bundle_task_id(attempts: Sequence[tuple[int, int]]) -> str:
    """The Celery task id of a message carrying these (chunk id, attempt) pairs."""
    return _BUNDLE + "+".join(f"{chunk}.{attempt}" for chunk, attempt in attempts)


def bundle_attempts(task_id: str) -> list[tuple[int, int]]:
    """The (chunk id, attempt) pairs a bundle's task id names; [] if it names none."""
    if not task_id.startswith(_BUNDLE):
        return []
    try:
        pairs = [part.split(".") for part in task_id.removeprefix(_BUNDLE).split("+")]
        return [(int(chunk), int(attempt)) for chunk, attempt in pairs]
    except ValueError:  # not one of ours
        return []


def attempt_task_ids(task_id: str) -> list[str]:
    """The attempts a Celery task id stands for: a bundle's, each by ``task_id_for``;
    any other id is its own."""
    pairs = bundle_attempts(task_id)
    return [task_id_for(chunk, attempt) for chunk, attempt in pairs] if pairs else [task_id]


def output_pattern_for(job_id: int) -> str:
    return f"jobs/{job_id}/frames/frame_{{frame}}.png"


def attempt_log_path(job_id: int, chunk_id: int, attempt: int) -> str:
    return f"jobs/{job_id}/logs/chunk-{chunk_id}-attempt-{attempt}.log"


def wire_dict(value: Any) -> dict[str, Any]:
    """A message's or event's fields as JSON-ready data, nested reports (and lists of
    them) too. Shallow otherwise: other lists and dicts are shared, not copied, so
    serialize it before changing the value's contents. ``dataclasses.asdict`` deep-
    copies everything: it was a quarter of a node's CPU per chunk outside Redis."""
    return {name: _wire(getattr(value, name)) for name in _field_names(type(value))}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # a dataclass's field names, found once


def _field_names(kind: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclass_fields(kind))
    return names


def _wire(value: Any) -> Any:
    if isinstance(value, FrameReport | NodeReport):
        return wire_dict(value)
    if isinstance(value, list) and value and isinstance(value[0], FrameReport):
        return [wire_dict(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class ChunkMessage:
    chunk_id: int
    attempt: int
    job_id: int
    pool: str
    frames: list[int]
    renderer: str
    settings: dict[str, Any]
    output_pattern: str  # relative to storage; "{frame}" is replaced by the frame number
    log_path: str  # relative to storage
    timeout: float  # render time limit per frame, seconds
    stall_timeout: float | None = None  # longest silence (no output) allowed, seconds
    node: str | None = None  # the node it was placed on (None: not placed, not sent)
    # The files the job needs (a manifest, fetched by id): the node lays them out in the
    # attempt's folder; the renderer's relative paths start there. None: no files.
    manifest_id: int | None = None
    # An OpenJD step's chunk: its tasks in order, each {"frames": [...], "parameters":
    # {name: [type, value]}} (the scheduler computes them: scheduler/wire/openjd.py).
    tasks: list[dict[str, Any]] | None = None
    # The most memory the renderer may take, bytes (the job's requirements.memory_gb);
    # None: the node's own bound for a renderer.
    memory_bytes: int | None = None

    @property
    def queue(self) -> str:
        """The queue of the node the chunk was placed on: chunks go to no other queue."""
        if self.node is None:
            raise ValueError(f"chunk {self.chunk_id} was placed on no node, so it has no queue")
        return node_queue(self.node)

    def output_for(self, frame: int) -> str:
        return self.output_pattern.replace("{frame}", f"{frame:06d}")

    def to_dict(self) -> dict[str, Any]:
        """The message as JSON-ready data. Shallow (its lists and dicts are shared, not
        copied: ``asdict`` copying them was a tenth of a dispatch's cost); serialize it
        before changing the message's contents."""
        return {"v": MESSAGE_VERSION, **wire_dict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkMessage:
        """Read a message of this version (fields it does not know are ignored: adding
        an optional field needs no new version); anything else is a ``MessageError``."""
        version = data.get("v", MESSAGE_VERSION)
        if version != MESSAGE_VERSION:
            raise MessageError(
                f"unsupported chunk message version: the scheduler speaks v{version}, "
                f"this node v{MESSAGE_VERSION}"
            )
        known = {f.name for f in dataclass_fields(cls)}
        try:
            message = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as error:  # a missing field
            raise MessageError(f"chunk message: {error}") from None
        if not isinstance(message.frames, list) or not all(
            isinstance(f, int) and not isinstance(f, bool) for f in message.frames
        ):
            raise MessageError(
                f"chunk message: frames must be a list of integers, not {message.frames!r}"
            )
        return message


@dataclass(frozen=True, slots=True)
class FrameReport:
    frame: int
    output: str | None  # relative to storage; None for renderers that write nothing
    render_seconds: float
    cpu_seconds: float
    energy_joules: float | None = None  # IT energy the node metered for it; None: unmetered
    energy_method: str | None = None  # rapl, nvml, model, or a sum such as "rapl+nvml"
    output_bytes: int | None = None  # the output's size: what its trip back moves

    def to_dict(self) -> dict[str, Any]:
        return wire_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameReport:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class NodeReport:
    name: str
    pool: str
    hostname: str
    slots: int
    running: int
    cores: int
    memory_bytes: int
    gpus: int = 0
    tags: list[str] = field(default_factory=list)
    region: str = ""
    energy_method: str | None = None  # None: the node does not meter energy
    power_watts: float = 0.0  # IT power over the node's last sampling interval
    # For OpenJD's hostRequirements: {"amounts": {name: number}, "attributes": {name:
    # [values]}}, detected at start and given by the operator (workers/node.py).
    capabilities: dict[str, Any] = field(default_factory=dict)
    # Chunks one Celery message may carry to it (``renderfarm.render_chunks``); a node
    # of a renderfarm before bundles says nothing, and gets one chunk a message.
    bundle: int = 1

    def to_dict(self) -> dict[str, Any]:
        return wire_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeReport:
        return cls(**data)


EVENT_VERSION = 1
MAX_WARNINGS = 20  # a renderer's warnings an attempt reports, at most

log = logging.getLogger(__name__)
_REQUIRED: Any = object()  # the default of a field that must be there


class EventKind(StrEnum):
    STARTED = "started"
    FRAME = "frame"
    FINISHED = "finished"
    FAILED = "failed"
    HEARTBEAT = "heartbeat"


class EventError(ValueError):
    """A node event this side cannot read; ``str(error)`` says what was wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkEvent:
    """What every chunk event carries: which attempt, on which node, billed where, when."""

    kind: ClassVar[EventKind]
    chunk_id: int
    attempt: int
    job_id: int
    node: str
    region: str = ""  # where the node stands: its frames are billed there
    at: float | None = None  # when the node sent it, epoch seconds; None: when ingested

    def to_dict(self) -> dict[str, Any]:
        return {"v": EVENT_VERSION, "kind": self.kind.value, **wire_dict(self)}


@dataclass(frozen=True, slots=True, kw_only=True)
class StartedEvent(ChunkEvent):
    kind: ClassVar[EventKind] = EventKind.STARTED


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameEvent(ChunkEvent):
    kind: ClassVar[EventKind] = EventKind.FRAME
    result: FrameReport


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishedEvent(ChunkEvent):
    kind: ClassVar[EventKind] = EventKind.FINISHED
    results: list[FrameReport]  # every frame of the chunk
    started_at: float | None = None  # a chunk done before "started" was due sends none
    exit_code: int | None = None
    warnings: list[str] = field(default_factory=list)  # the renderer's, for the studio


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedEvent(ChunkEvent):
    kind: ClassVar[EventKind] = EventKind.FAILED
    error: str
    exit_code: int | None = None  # None: the renderer did not exit by itself
    energy_joules: float | None = None  # IT energy the attempt used; None: unmetered
    started_at: float | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatEvent:
    kind: ClassVar[EventKind] = EventKind.HEARTBEAT
    node: str
    info: NodeReport
    # Celery task ids of the attempts the node holds; None: it did not say, and the
    # scheduler then requeues nothing of it.
    tasks: list[str] | None = None
    at: float | None = None  # when the node sent it, epoch seconds
    # The node's own say about its life (``NodeLife``): "online"; "leaving" (told to stop:
    # it takes no new chunk and finishes or hands back those it runs); "left" (its last
    # word: it runs nothing, and what the farm thought it held goes elsewhere at once).
    life: str = "online"

    def to_dict(self) -> dict[str, Any]:
        return {"v": EVENT_VERSION, "kind": self.kind.value, **wire_dict(self)}


class NodeLife(StrEnum):
    """What a node says of its own life in its heartbeat (``HeartbeatEvent.life``)."""

    ONLINE = "online"
    LEAVING = "leaving"
    LEFT = "left"


NodeEvent = StartedEvent | FrameEvent | FinishedEvent | FailedEvent | HeartbeatEvent


def decode_event(data: Any) -> NodeEvent:
    """The typed event of a JSON object a node sent; ``EventError`` if it is not one."""
    if not isinstance(data, dict):
        raise EventError(f"an event is a JSON object, not {data!r:.80}")
    version = data.get("v", EVENT_VERSION)
    if not _is_int(version):
        raise EventError(f"the event's version 'v' must be an integer, not {version!r:.80}")
    if version != EVENT_VERSION:
        raise EventError(
            f"unsupported event version: the node speaks v{version}, "
            f"this scheduler v{EVENT_VERSION}"
        )
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in _READERS:
        known = ", ".join(k.value for k in EventKind)
        raise EventError(f"unknown event kind {kind!r:.80} (v{version} knows {known})")
    return _READERS[EventKind(kind)](data, f"{kind} event")


def _read_started(data: Mapping[str, Any], where: str) -> StartedEvent:
    return StartedEvent(**_chunk_fields(data, where))


def _read_frame(data: Mapping[str, Any], where: str) -> FrameEvent:
    result = _read_report(_field(data, "result", where, _is_object, "an object"), where)
    return FrameEvent(**_chunk_fields(data, where), result=result)


def _read_finished(data: Mapping[str, Any], where: str) -> FinishedEvent:
    fields = _chunk_fields(data, where)
    results = []
    for i, payload in enumerate(_field(data, "results", where, _is_list, "a list")):
        try:
            results.append(_read_report(payload, f"{where}: results[{i}]"))
        except EventError as error:
            # The event stands: the scheduler fails the attempt for the frames it lacks.
            log.error("chunk %s attempt %s: ignoring a malformed frame report: %s",
                      fields["chunk_id"], fields["attempt"], error)  # fmt: skip
    return FinishedEvent(
        **fields,
        results=results,
        started_at=_field(data, "started_at", where, _is_number, "a number", None, True),
        exit_code=_field(data, "exit_code", where, _is_int, "an integer", None, True),
        warnings=_warnings(data, where),
    )


def _warnings(data: Mapping[str, Any], where: str) -> list[str]:
    found = _field(data, "warnings", where, _is_str_list, "a list of strings", None, True)
    return [w[:500] for w in (found or [])[:MAX_WARNINGS]]


def _read_failed(data: Mapping[str, Any], where: str) -> FailedEvent:
    return FailedEvent(
        **_chunk_fields(data, where),
        error=_field(data, "error", where, _is_str, "a string"),
        exit_code=_field(data, "exit_code", where, _is_int, "an integer", None, True),
        energy_joules=_energy(data, where),
        started_at=_field(data, "started_at", where, _is_number, "a number", None, True),
        warnings=_warnings(data, where),
    )


def _read_heartbeat(data: Mapping[str, Any], where: str) -> HeartbeatEvent:
    info = _field(data, "info", where, _is_object, "an object")
    return HeartbeatEvent(
        node=_field(data, "node", where, _is_str, "a string"),
        info=_read_node_report(info, f"{where}: info"),
        tasks=_field(data, "tasks", where, _is_str_list, "a list of strings", None, True),
        at=_field(data, "at", where, _is_number, "a number", None, True),
        life=_life(data, where),
    )


def _life(data: Mapping[str, Any], where: str) -> str:
    """A heartbeat's ``life`` (absent: "online", as a node before it said nothing)."""
    life = _field(data, "life", where, _is_str, "a string", NodeLife.ONLINE.value)
    try:
        return NodeLife(life).value
    except ValueError:
        known = ", ".join(NodeLife)
        raise EventError(
            f"{where}: field 'life' must be one of {known}, not {life!r:.80}"
        ) from None


_READERS: dict[EventKind, Callable[[Mapping[str, Any], str], NodeEvent]] = {
    EventKind.STARTED: _read_started,
    EventKind.FRAME: _read_frame,
    EventKind.FINISHED: _read_finished,
    EventKind.FAILED: _read_failed,
    EventKind.HEARTBEAT: _read_heartbeat,
}


def _chunk_fields(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    fields = {
        "chunk_id": _field(data, "chunk_id", where, _is_int, "an integer"),
        "attempt": _field(data, "attempt", where, _is_int, "an integer"),
        "job_id": _field(data, "job_id", where, _is_int, "an integer"),
        "node": _field(data, "node", where, _is_str, "a string"),
        "region": _field(data, "region", where, _is_str, "a string", "", True) or "",
        "at": _field(data, "at", where, _is_number, "a number", None, True),
    }
    if fields["chunk_id"] < 0 or fields["attempt"] < 1:
        raise EventError(
            f"{where}: no such attempt: chunk {fields['chunk_id']}, attempt {fields['attempt']}"
        )
    return fields


def _read_report(data: Any, where: str) -> FrameReport:
    if not isinstance(data, dict):
        raise EventError(f"{where}: a frame report is a JSON object, not {data!r:.80}")
    return FrameReport(
        frame=_field(data, "frame", where, _is_int, "an integer"),
        output=_field(data, "output", where, _is_str, "a string or null", nullable=True),
        render_seconds=_field(data, "render_seconds", where, _is_number, "a number"),
        cpu_seconds=_field(data, "cpu_seconds", where, _is_number, "a number"),
        energy_joules=_energy(data, where),
        energy_method=_field(data, "energy_method", where, _is_str, "a string", None, True),
        output_bytes=_size(data, where),
    )


def _read_node_report(data: Mapping[str, Any], where: str) -> NodeReport:
    def count(name: str, default: Any = _REQUIRED) -> Any:
        return _field(data, name, where, _is_int, "an integer", default)

    def text(name: str, most: int, default: Any = _REQUIRED, empty: bool = False) -> Any:
        what = f"a string of {0 if empty else 1} to {most} characters, without NUL"
        nullable = default is None
        return _field(data, name, where, _is_text(most, empty), what, default, nullable)

    # Bounded as the nodes table's columns are: a node reporting a name the database
    # cannot store (too long, a NUL, a lone surrogate) is ignored here, not the failure
    # of its batch's statement and of every other node's beat in it.
    return NodeReport(
        name=text("name", NAME_MAX),
        pool=text("pool", POOL_MAX),
        hostname=text("hostname", HOSTNAME_MAX, empty=True),
        slots=count("slots"),
        running=count("running"),
        cores=count("cores"),
        memory_bytes=count("memory_bytes"),
        gpus=count("gpus", 0),
        tags=_field(data, "tags", where, _is_str_list, "a list of strings", []),
        region=text("region", POOL_MAX, "", empty=True),
        energy_method=text("energy_method", METHOD_MAX, None, empty=True),
        power_watts=_field(data, "power_watts", where, _is_number, "a number", 0.0),
        capabilities=_field(data, "capabilities", where, _is_dict, "an object", {}),
        bundle=max(1, min(BUNDLE_MAX, count("bundle", 1))),  # what this scheduler sends
    )


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _field(
    data: Mapping[str, Any],
    name: str,
    where: str,
    check: Callable[[Any], bool],
    what: str,
    default: Any = _REQUIRED,
    nullable: bool = False,
) -> Any:
    """``data[name]`` if ``check`` passes; ``default`` if absent; else ``EventError``."""
    if name not in data:
        if default is _REQUIRED:
            raise EventError(f"{where}: field {name!r} is missing")
        return default
    value = data[name]
    if value is None and nullable:
        return None
    if not check(value):
        raise EventError(f"{where}: field {name!r} must be {what}, not {value!r:.80}")
    return value


def _energy(data: Mapping[str, Any], where: str) -> float | None:
    """Joules, or None: a figure no meter can give is dropped (logged), not the event."""
    value = data.get("energy_joules")
    if value is None:
        return None
    if _is_number(value) and value >= 0:
        return float(value)
    log.error("%s: ignoring an impossible energy figure %r", where, value)
    return None


def _size(data: Mapping[str, Any], where: str) -> int | None:
    """Bytes, or None: a size no file can have is dropped (logged), not the frame; an
    older node sends none."""
    value = data.get("output_bytes")
    if value is None or (_is_int(value) and value >= 0):
        return value
    log.error("%s: ignoring an impossible output size %r", where, value)
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_text(most: int, empty: bool = False) -> Callable[[Any], bool]:
    """A check: a string the database can store (no NUL, no lone surrogate) of at most
    ``most`` characters, and not empty unless so."""
    return lambda value: (
        isinstance(value, str)
        and (empty or bool(value))
        and len(value) <= most
        and text_problem(value) is None
    )


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
