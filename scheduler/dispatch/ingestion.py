"""Ingesting node events: one batch, one transaction, idempotent by (chunk, attempt).

Whether an event counts, and what it does to its chunk, is the pure core's decision
(``chunk_state_after_event``); this module loads the chunks, applies the decisions,
and writes the changes in bulk: one statement per shape of change, not per row.

Events arrive as the JSON objects nodes sent; ``split_events`` decodes them into the
typed events of scheduler/wire/messages.py. One that cannot be decoded (an unknown
kind, another version of the schema, a missing or mistyped field) is logged once
with the reason, counted as ignored, and the rest of the batch goes on.

A "finished" event must bring a valid frame report for every frame of its chunk:
frames without one would never be rendered, so such an attempt fails instead (and
is retried like any failure); the frames it did report validly are recorded.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, Integer, String, bindparam, cast, func
from sqlalchemy import select as sql_select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session, col

from scheduler.core.energy import RegionFigures
from scheduler.core.frames import format_frame_spec
from scheduler.core.policy import (
    chunk_state_after_event,
    exceeds_failure_limit,
    retry_delay,
    vanished_attempts,
)
from scheduler.core.rollups import ENDED_STATES
from scheduler.core.states import ACTIVE_CHUNK_STATES, AttemptState, ChunkState
from scheduler.db import ChunkRow, FrameResultRow, JobRow, NodeRow
from scheduler.db.among import among
from scheduler.db.outbox import emit
from scheduler.db.transitions import (
    ChunkChange,
    end_queued_chunks,
    failed_frames,
    lock_jobs_of_chunks,
    refresh_job_states,
    requeue_chunks,
    save_attempt_changes,
    save_chunk_changes,
)
from scheduler.usecases.billing import FrameBiller, count_attempts, count_frames
from scheduler.wire.events import is_wake, woken_for
from scheduler.wire.messages import (
    ChunkEvent,
    EventError,
    EventKind,
    FailedEvent,
    FinishedEvent,
    FrameEvent,
    FrameReport,
    HeartbeatEvent,
    NodeLife,
    NodeReport,
    StartedEvent,
    decode_event,
    task_id_for,
)

log = logging.getLogger(__name__)

VANISHED_GRACE_SECONDS = 2.0
_BILL_COLUMNS = (
    "region", "energy_method", "it_joules", "facility_joules", "cost", "co2_grams", "pue",
    "price_per_kwh", "carbon_g_per_kwh", "baseline_facility_joules", "baseline_cost",
    "baseline_co2_grams",
)  # fmt: skip
RetryTiming = tuple[float, float]  # (first wait, longest wait), seconds
NO_VALID_RESULT = "the node reported no valid frame result"

_CHUNKS_OF_EVENTS = sql_select(
    col(ChunkRow.id), col(ChunkRow.job_id), col(ChunkRow.pool), col(ChunkRow.state),
    col(ChunkRow.attempts), col(ChunkRow.failures), col(ChunkRow.dispatched_at),
    col(JobRow.max_attempts), col(JobRow.studio_id), col(JobRow.submitted_at),
    col(ChunkRow.first_frame), col(ChunkRow.last_frame), col(ChunkRow.step),
).join(JobRow, col(JobRow.id) == col(ChunkRow.job_id)).where(
    among(col(ChunkRow.id), "ids")
)  # fmt: skip
_FRAMES_DONE = sql_select(
    col(FrameResultRow.job_id), col(FrameResultRow.frame), col(FrameResultRow.id),
    col(FrameResultRow.attempt), col(FrameResultRow.it_joules),
).where(among(col(FrameResultRow.chunk_id), "ids"))  # fmt: skip
_FRAME_TABLE = FrameResultRow.__table__  # type: ignore[attr-defined]
_INSERT_RESULTS = _FRAME_TABLE.insert()  # Core: not the ORM's bulk path
_RESTATE_ENERGY = (
    _FRAME_TABLE.update()
    .where(_FRAME_TABLE.c.id == bindparam("b_id"))
    .values({name: bindparam(name) for name in _BILL_COLUMNS})
)


@dataclass(slots=True)
class IngestOutcome:
    applied: int = 0
    ignored: int = 0
    # Chunks rendered, by pool, and the seconds each held its slot (the pool's pace).
    finished: Counter[str] = field(default_factory=Counter)
    held: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # The same by job: whether its chunks are short enough to send several a message.
    held_by_job: defaultdict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    failed_jobs: set[int] = field(default_factory=set)  # jobs with a chunk failed for good
    # Renders still going for attempts that no longer count (superseded, cancelled,
    # or brought back by Celery long after): the scheduler stops them at once.
    unwanted: list[tuple[int, int]] = field(default_factory=list)  # (chunk id, attempt)
    # Seconds between sending an attempt and a node starting it.
    dispatch_latencies: list[float] = field(default_factory=list)
    # Nodes that appeared, came back or offer something else.
    nodes_changed: set[str] = field(default_factory=set)
    woken: bool = False  # the API rang: new work may dispatch

    @property
    def dispatch_now(self) -> bool:
        """Whether the batch changed what may dispatch (slots freed, nodes, new work);
        else the dispatch can wait for its tick."""
        return bool(self.finished or self.nodes_changed) or self.woken


def split_events(
    events: Sequence[dict[str, Any]],
) -> tuple[list[ChunkEvent], list[HeartbeatEvent], list[str | None]]:
    """(chunk events, heartbeats), decoded, and the bell's wakes (in neither), as the
    node each names (None: none); an event that cannot be decoded is logged and in
    neither."""
    chunk_events: list[ChunkEvent] = []
    beats: list[HeartbeatEvent] = []
    wakes: list[str | None] = []
    for data in events:
        if is_wake(data):  # the API's bell: it woke the loop, and may name a node
            wakes.append(woken_for(data))
            continue
        try:
            event = decode_event(data)
        except EventError as error:
            log.error("ignoring a node event: %s: %.300r", error, data)
            continue
        if isinstance(event, HeartbeatEvent):
            beats.append(event)
        else:
            chunk_events.append(event)
    return chunk_events, beats, wakes


def apply_chunk_events(
    session: Session,
    events: Sequence[ChunkEvent],
    now: float,
    outcome: IngestOutcome,
    retry: RetryTiming,
    biller: FrameBiller,
) -> None:
    """Apply chunk events in order; events of non-current attempts are ignored.

    The jobs of the batch are locked before their chunks are read, and each chunk's
    change is written only if the chunk is still in the state and attempt it was read
    in (compare-and-set); a chunk that another transaction moved first keeps that
    move, and this batch's events of it change nothing.
    """
    chunk_ids = {e.chunk_id for e in events}
    locked = lock_jobs_of_chunks(session, chunk_ids)
    chunks: dict[int, _ChunkView] = {}
    max_attempts: dict[int, int] = {}
    loaded = session.execute(_CHUNKS_OF_EVENTS, {"ids": list(chunk_ids)})
    for cid, job_id, pool, state, attempts, failures, sent, allowed, studio, *rest in loaded:
        submitted, first, last, step = rest
        chunks[cid] = _ChunkView(
            cid, job_id, studio, pool, ChunkState(state), attempts, failures, sent,
            range(first, last + 1, step), read_state=ChunkState(state), submitted_at=submitted,
        )  # fmt: skip
        max_attempts[job_id] = allowed
    # (job, frame) -> (row id, attempt, IT joules) of the frames already recorded.
    done_frames: dict[tuple[int, int], tuple[int | None, int, float | None]] = {
        (job_id, frame): (row_id, attempt, joules)
        for job_id, frame, row_id, attempt, joules in session.execute(
            _FRAMES_DONE, {"ids": list(chunk_ids)}
        )
    }
    biller.load_regions(session, _billed_regions(events), now)
    biller.load_homes(session, {chunk.studio_id for chunk in chunks.values()})

    def baseline_of(chunk: _ChunkView) -> RegionFigures | None:
        return biller.baseline(chunk.studio_id, chunk.submitted_at)

    restated: list[dict[str, Any]] = []  # recorded frames whose energy "finished" completes
    attempt_changes: dict[tuple[int, int], dict[str, Any]] = defaultdict(dict)
    pending: dict[tuple[int, int], dict[str, Any]] = {}  # frame rows to insert
    for event in events:
        chunk = chunks.get(event.chunk_id)
        attempt_no = event.attempt
        kind: str = event.kind
        reports: list[FrameReport] = []
        missing: list[int] = []  # frames a "finished" event brings no valid result for
        if chunk is not None and isinstance(event, FrameEvent):
            reports = _reports([event.result], chunk, event)
        elif chunk is not None and isinstance(event, FinishedEvent):
            reports = _reports(event.results, chunk, event)
            missing = sorted(set(chunk.frames) - {r.frame for r in reports})
            if missing:  # frames without a result would never be rendered
                kind = EventKind.FAILED
        state = None
        if chunk is not None:
            state = chunk_state_after_event(
                chunk.current,
                chunk.attempts,
                attempt_no,
                kind,
                chunk.failures + 1,  # counting this event's, should it be a failure
                max_attempts[chunk.job_id],
            )
        if chunk is None or state is None:
            outcome.ignored += 1
            if isinstance(event, StartedEvent | FrameEvent):  # a render the farm no longer wants
                outcome.unwanted.append((event.chunk_id, attempt_no))
            continue
        node = event.node
        at = event.at or now
        attempt = attempt_changes[(chunk.id, attempt_no)]
        region = event.region[:64]
        if isinstance(event, StartedEvent):
            if chunk.current != state:
                chunk.changes["started_at"] = at
                chunk.latencies.append(max(0.0, at - (chunk.dispatched_at or at)))
            chunk.changes["node"] = node
            attempt.update(state=AttemptState.RUNNING, node=node, started_at=at)
        elif isinstance(event, FinishedEvent | FailedEvent):
            if chunk.current == ChunkState.DISPATCHED:  # ended before "started" was due
                started = event.started_at or at
                chunk.changes["started_at"] = started
                attempt["started_at"] = started
                chunk.latencies.append(max(0.0, started - (chunk.dispatched_at or at)))
            attempt.update(node=node, finished_at=at, exit_code=event.exit_code)
            chunk.warnings += event.warnings
            chunk.changes["node"] = node
            if kind == EventKind.FINISHED:
                chunk.changes["finished_at"] = at
                chunk.rendered += 1
                began = event.started_at if event.at is not None else None  # one clock
                chunk.held.append(_held_seconds(began, at, reports))
                attempt["state"] = AttemptState.DONE
                attempt["energy_joules"] = _energy_of(reports)
            else:
                chunk.failures += 1
                chunk.changes["failures"] = chunk.failures
                if state == ChunkState.FAILED:
                    chunk.changes["finished_at"] = at
                    chunk.failed_for_good = True
                else:  # retried, after a pause that doubles with each failure
                    chunk.changes["not_before"] = now + retry_delay(chunk.failures, *retry)
                if isinstance(event, FailedEvent):
                    error, spent = event.error, event.energy_joules
                else:
                    error, spent = NO_VALID_RESULT, _energy_of(reports)
                    if reports:
                        error += f" for frame(s) {format_frame_spec(missing)}"
                    log.error("chunk %d attempt %d: %s", chunk.id, attempt_no, error)
                attempt.update(state=AttemptState.FAILED, error=error[:2000], energy_joules=spent)
        chunk.current = state
        chunk.changes["state"] = state
        for report in reports:
            key = (chunk.job_id, report.frame)
            known = done_frames.get(key)
            if known is not None:
                # The last frame's energy grows in "finished" by the renderer's exit.
                row_id, by_attempt, joules = known
                if by_attempt == attempt_no and report.energy_joules != joules:
                    bill = biller.bill(region, report.energy_joules, at, baseline_of(chunk))
                    bill.pop("day")
                    bill["energy_method"] = _method_of(report)
                    if row_id is None:  # recorded earlier in this very batch
                        pending[key].update(bill)
                    else:
                        restated.append({"b_id": row_id, "b_chunk": chunk.id, **bill})
                continue
            done_frames[key] = (None, attempt_no, report.energy_joules)
            pending[key] = {
                "job_id": chunk.job_id,
                "studio_id": chunk.studio_id,
                "chunk_id": chunk.id,
                "frame": report.frame,
                "attempt": attempt_no,
                "node": node,
                "pool": chunk.pool,
                "output": report.output,
                "output_bytes": report.output_bytes,
                "render_seconds": report.render_seconds,
                "cpu_seconds": report.cpu_seconds,
                "finished_at": at,
                "energy_method": _method_of(report),
                **biller.bill(region, report.energy_joules, at, baseline_of(chunk)),
            }
        chunk.applied += 1
    moved_first = save_chunk_changes(
        session,
        [
            ChunkChange(c.id, c.read_state, c.attempts, c.current, c.changes)
            for c in chunks.values()
            if c.changes
        ],
    )
    if moved_first:  # another transaction moved these chunks first: their events are stale
        log.warning("chunks %s moved while their events were ingested; ignoring those events",
                    sorted(moved_first))  # fmt: skip
        pending = {k: row for k, row in pending.items() if row["chunk_id"] not in moved_first}
        restated = [row for row in restated if row["b_chunk"] not in moved_first]
        attempt_changes = {k: v for k, v in attempt_changes.items() if k[0] not in moved_first}
    warned: dict[int, list[str]] = {}  # job -> what its renderers warned of
    for chunk in chunks.values():  # what the batch did, counted from the chunks that moved
        if chunk.id in moved_first:
            outcome.ignored += chunk.applied
            chunk.changes.clear()
            continue
        outcome.applied += chunk.applied
        if chunk.warnings:
            warned.setdefault(chunk.job_id, []).extend(chunk.warnings)
        if chunk.rendered:
            outcome.finished[chunk.pool] += chunk.rendered
            outcome.held[chunk.pool] += chunk.held
            outcome.held_by_job[chunk.job_id] += chunk.held
        outcome.dispatch_latencies += chunk.latencies
        if chunk.failed_for_good:
            outcome.failed_jobs.add(chunk.job_id)
            why = [v.get("error") for (c, _), v in attempt_changes.items() if c == chunk.id]
            emit(
                session, chunk.studio_id, "frame.failed", now, chunk.job_id,
                frames=format_frame_spec(chunk.frames), attempts=chunk.attempts,
                error=why[-1] if why else None,
            )  # fmt: skip
    save_attempt_changes(session, attempt_changes)
    count_attempts(
        session,
        [
            (chunks[chunk_id].pool, values["state"], values.get("energy_joules"))
            for (chunk_id, _), values in attempt_changes.items()
            if values.get("state") in ENDED_STATES
        ],
    )
    count_frames(
        session,
        list(pending.values()),
        {row["b_id"]: {name: row[name] for name in _BILL_COLUMNS} for row in restated},
    )
    if pending:
        session.execute(_INSERT_RESULTS, list(pending.values()))
    if restated:
        session.execute(_RESTATE_ENERGY, restated)
    _save_warnings(session, warned)
    stopped = _stop_failing_jobs(session, outcome.failed_jobs)
    touched = {c.job_id for c in chunks.values() if c.changes} | stopped
    if touched:  # locked at the start: their state, suspension and cancel are as read
        refresh_job_states(session, [locked[job_id] for job_id in sorted(touched)], now)


def _billed_regions(events: Sequence[ChunkEvent]) -> set[str]:
    """The regions of the batch's metered frame reports (their figures are needed)."""
    regions = set()
    for event in events:
        if isinstance(event, FrameEvent):
            reports: Iterable[FrameReport] = [event.result]
        elif isinstance(event, FinishedEvent):
            reports = event.results
        else:
            continue
        if any(report.energy_joules is not None for report in reports):
            regions.add(event.region[:64])
    return regions


def _reports(
    reports: Iterable[FrameReport], chunk: _ChunkView, event: ChunkEvent
) -> list[FrameReport]:
    """The reports of the chunk's own frames; one of another frame is logged and left out.

    (Malformed reports were left out when the event was decoded.)
    """
    mine = []
    for report in reports:
        if report.frame in chunk.frames:
            mine.append(report)
        else:
            log.error(
                "chunk %d attempt %d: ignoring a report of frame %d, not one of its frames %s",
                chunk.id, event.attempt, report.frame, format_frame_spec(chunk.frames),
            )  # fmt: skip
    return mine


def _energy_of(reports: Sequence[FrameReport]) -> float | None:
    """An attempt's energy: its frames' sum, if every frame was metered."""
    if not reports or any(r.energy_joules is None for r in reports):
        return None
    return sum(r.energy_joules or 0.0 for r in reports)


def _held_seconds(started_at: float | None, at: float, reports: Sequence[FrameReport]) -> float:
    """How long a rendered attempt held its slot, for the pool's pace: its start to its
    end by the node's clock, or its frames' render time where that says more."""
    rendering = sum(r.render_seconds for r in reports)  # finite numbers: decoded so
    return max(at - started_at if started_at is not None else 0.0, rendering, 0.0)


def _method_of(report: FrameReport) -> str | None:
    return str(report.energy_method)[:32] if report.energy_joules is not None else None


def _number_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


MAX_CAPABILITIES = 64  # names a node reports, at most; as many values per attribute


def _capabilities(reported: Any) -> dict[str, Any]:
    """What a node reported of its capabilities, as much of it as reads: names and
    values are short text, amounts finite numbers, within bounds."""
    reported = reported if isinstance(reported, dict) else {}
    amounts, attributes = reported.get("amounts"), reported.get("attributes")
    kept_amounts = {
        name[:100]: number
        for name, value in list(amounts.items() if isinstance(amounts, dict) else ())[
            :MAX_CAPABILITIES
        ]
        if isinstance(name, str)
        and (number := _number_or_none(value)) is not None
        and math.isfinite(number)
    }
    kept_attributes = {
        name[:100]: [str(v)[:100] for v in values[:MAX_CAPABILITIES]]
        for name, values in list(attributes.items() if isinstance(attributes, dict) else ())[
            :MAX_CAPABILITIES
        ]
        if isinstance(name, str) and isinstance(values, list)
    }
    return {"amounts": kept_amounts, "attributes": kept_attributes}


MAX_JOB_WARNINGS = 50


def _save_warnings(session: Session, warned: dict[int, list[str]]) -> None:
    """Keep what renderers warned of on their jobs, each warning once (50 at most)."""
    for job_id, warnings in warned.items():
        job = session.get(JobRow, job_id)
        if job is None:
            continue
        known = list(job.warnings or [])
        new = [w for w in dict.fromkeys(warnings) if w not in known]
        if new:
            job.warnings = (known + new)[:MAX_JOB_WARNINGS]
            session.add(job)


def _stop_failing_jobs(session: Session, job_ids: set[int]) -> set[int]:
    """Jobs past their limit of failed frames dispatch nothing more: their queued chunks
    end. Returns the jobs stopped."""
    stopped = set()
    for job_id in job_ids:
        job = session.get(JobRow, job_id)
        if job is None or job.max_failed_frames is None:
            continue
        failed = failed_frames(session, job_id)
        if exceeds_failure_limit(failed, job.max_failed_frames):
            end_queued_chunks(session, job_id)
            job.message = (
                f"stopped: {failed} frame(s) failed every attempt, "
                f"the job's limit is {job.max_failed_frames}"
            )
            session.add(job)
            stopped.add(job_id)
    return stopped


_NODE_TABLE = NodeRow.__table__  # type: ignore[attr-defined]
_OFFERED = ("pool", "hostname", "slots", "cores", "memory_bytes", "gpus", "tags", "region",
            "energy_method", "capabilities", "bundle")  # fmt: skip
# Tags and capabilities are JSON: read as the text stored, and each distinct text
# decoded once (``_stored_json``), not once per heartbeat: a farm's nodes come in a few
# shapes, and 10,000 nodes beat 2,000 times a second.
_JSON_OFFERED = ("tags", "capabilities")
_KNOWN_NODES = sql_select(
    _NODE_TABLE.c.name,
    _NODE_TABLE.c.state,
    *(cast(_NODE_TABLE.c[c], String) if c in _JSON_OFFERED else _NODE_TABLE.c[c] for c in _OFFERED),
).where(among(_NODE_TABLE.c.name, "names"))
_JSON_AT = tuple(_OFFERED.index(column) for column in _JSON_OFFERED)
_DECODED: dict[str, Any] = {}  # stored JSON text -> its value
_LIVE = ("running", "power_watts", "last_heartbeat")
# A node that reports what it reported before: it lives, and how busy it is. SQLite
# takes one UPDATE per node (executemany, in process); PostgreSQL one UPDATE for the
# batch, from arrays (1,000 statements a turn cost its server more than the updates).
_BEAT = (
    _NODE_TABLE.update()
    .where(_NODE_TABLE.c.name == bindparam("b_name"))
    .values({c: bindparam(c) for c in _LIVE})
)
_BEAT_TYPES = {"b_name": String, "running": Integer, "power_watts": Float, "last_heartbeat": Float}
_BEATS = (
    func.unnest(*(bindparam(c, type_=ARRAY(t)) for c, t in _BEAT_TYPES.items()))
    .table_valued("name", *_LIVE)
    .render_derived(name="beat")
)
_BEAT_ALL = (
    _NODE_TABLE.update()
    .where(_NODE_TABLE.c.name == _BEATS.c.name)
    .values({c: _BEATS.c[c] for c in _LIVE})
)
# A node that is new (all it offers, and when it came), or that returns or changes what
# it offers: one statement for all such nodes of a batch, not a round trip each (10,000
# nodes starting at once register within a few turns).
_REGISTER = _NODE_TABLE.insert().values(
    {c: bindparam(c) for c in ("name", *_OFFERED, *_LIVE, "state", "admin", "registered_at")}
)
_REOFFER = (
    _NODE_TABLE.update()
    .where(_NODE_TABLE.c.name == bindparam("b_name"))
    .values({c: bindparam(c) for c in (*_OFFERED, *_LIVE, "state")})
)
_RUNNING_ON = sql_select(
    col(ChunkRow.node), col(ChunkRow.id), col(ChunkRow.attempts), col(ChunkRow.started_at)
).where(among(col(ChunkRow.node), "names"), col(ChunkRow.state) == ChunkState.RUNNING)


def save_heartbeats(session: Session, events: Sequence[HeartbeatEvent], now: float) -> set[str]:
    """Register or refresh each reporting node; requeue attempts it no longer holds.

    In bulk, whatever the farm's size: one read of the reporting nodes, one
    statement for all that report what they reported before (most beats: only that
    they live, how busy, their power), one read of their running chunks. Returns
    the nodes that appeared, came back or changed what they offer: the dispatch
    should look at them at once.
    """
    latest = {event.info.name: event for event in events}
    if not latest:
        return set()
    dialect = session.get_bind().dialect.name
    known = {row.name: row for row in session.execute(_KNOWN_NODES, {"names": list(latest)})}
    beats: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    reoffered: list[dict[str, Any]] = []
    for name, event in latest.items():
        report = event.info
        live = {
            "running": report.running,
            "power_watts": _number_or_none(report.power_watts) or 0.0,
            "last_heartbeat": now,
        }
        if event.life == NodeLife.LEFT:
            live["running"] = 0
        row = known.get(name)
        if row is None:
            new.append({"name": name, **_offered(report), **live, "state": event.life,
                        "admin": "enabled", "registered_at": now})  # fmt: skip
            continue
        offered = _offered(report)
        if row.state == event.life and _offers(row, offered):
            beats.append({"b_name": name, **live})
        else:
            reoffered.append({"b_name": name, **offered, **live, "state": event.life})
    session.flush()  # what the session holds goes first: these statements bypass it
    for statement, rows in ((_REGISTER, new), (_REOFFER, reoffered)):
        if rows:
            session.execute(statement, rows)
    if beats and dialect == "postgresql":
        session.execute(_BEAT_ALL, {c: [beat[c] for beat in beats] for c in _BEAT_TYPES})
    elif beats:
        session.execute(_BEAT, beats)
    _requeue_vanished(session, [e for e in latest.values() if e.tasks is not None], now)
    _requeue_departing(session, [e for e in latest.values() if e.life != NodeLife.ONLINE], now)
    return {row["name"] for row in new} | {row["b_name"] for row in reoffered}


def _offered(report: NodeReport) -> dict[str, Any]:
    """The columns of what a node offers (``_OFFERED``), as its report says."""
    return dict(
        zip(
            _OFFERED,
            (
                report.pool, report.hostname, report.slots, report.cores, report.memory_bytes,
                report.gpus, list(report.tags), str(report.region)[:64],
                str(report.energy_method)[:32] if report.energy_method else None,
                _capabilities(report.capabilities), report.bundle,
            ),
            strict=True,
        )
    )  # fmt: skip


def _offers(row: Any, offered: dict[str, Any]) -> bool:
    """Whether the stored node (a row of ``_KNOWN_NODES``) offers what it now reports."""
    stored = list(row[2:])
    for at in _JSON_AT:
        stored[at] = _stored_json(stored[at])
    return stored == list(offered.values())


def _stored_json(text: str | None) -> Any:
    """The value of a JSON column read as text (None: SQL NULL), decoded once per text."""
    if text is None:
        return None
    value = _DECODED.get(text, _DECODED)  # the dict itself: not decoded yet
    if value is _DECODED:
        if len(_DECODED) >= 4096:  # nodes of more shapes than a farm has: start afresh
            _DECODED.clear()
        value = _DECODED[text] = json.loads(text)
    return value


_HELD_BY = sql_select(
    col(ChunkRow.node), col(ChunkRow.id), col(ChunkRow.attempts), col(ChunkRow.state)
).where(among(col(ChunkRow.node), "names"), col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES))


def _requeue_departing(session: Session, beats: Sequence[HeartbeatEvent], now: float) -> None:
    """What nodes going away will not render goes back to the queue now, not after the
    node timeout: a leaving node's chunks still waiting in its Celery queue (it takes
    no new message; those it lists it finishes or hands back), and everything the farm
    thought a node that left held (its last word: it runs nothing)."""
    if not beats:
        return
    life = {beat.info.name: beat for beat in beats}
    back: list[int] = []
    for node, chunk_id, attempt, state in session.execute(_HELD_BY, {"names": list(life)}):
        beat = life[node]
        if beat.life == NodeLife.LEFT or (
            state == ChunkState.DISPATCHED
            and task_id_for(chunk_id, attempt) not in (beat.tasks or ())
        ):
            back.append(chunk_id)
    if back:
        log.warning("%d chunk(s) of nodes going away (%s): queued again at once",
                    len(back), ", ".join(sorted(life)[:10]))  # fmt: skip
        requeue_chunks(session, back, ACTIVE_CHUNK_STATES, now)


def _requeue_vanished(session: Session, beats: Sequence[HeartbeatEvent], now: float) -> None:
    """Chunks that nodes say (by the tasks their heartbeats list) they no longer run."""
    if not beats:
        return
    running: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    names = [beat.info.name for beat in beats]
    for node, chunk_id, attempt, started_at in session.execute(_RUNNING_ON, {"names": names}):
        running[node].append((chunk_id, task_id_for(chunk_id, attempt), started_at or 0.0))
    vanished: list[int] = []
    for beat in beats:
        if beat.at is None or not running.get(beat.info.name):
            continue
        gone = vanished_attempts(
            running[beat.info.name], set(beat.tasks or ()), beat.at, VANISHED_GRACE_SECONDS
        )
        if gone:
            log.warning("node %s no longer holds %d running attempt(s); rendering them again",
                        beat.info.name, len(gone))  # fmt: skip
            vanished += gone
    if vanished:
        requeue_chunks(session, vanished, [ChunkState.RUNNING], now)


@dataclass(slots=True)
class _ChunkView:
    """A chunk as one ingest batch sees it, with the columns the batch changed."""

    id: int
    job_id: int
    studio_id: int
    pool: str
    current: ChunkState  # as this batch has moved it so far
    attempts: int
    failures: int  # failed attempts since the last retry, before this batch
    dispatched_at: float | None
    frames: range  # the frames it renders
    read_state: ChunkState  # as read: the change is written only if it still is
    changes: dict[str, Any] = field(default_factory=dict)
    applied: int = 0  # events of this batch that changed it
    # Attempts of it that rendered in this batch: the pool's pace, which sets how deep
    # its queues are (``queue_buffer``). Failures are not counted: a node failing each
    # chunk at once must not be sent more for failing faster.
    rendered: int = 0
    held: list[float] = field(default_factory=list)  # how long each held its slot
    failed_for_good: bool = False
    latencies: list[float] = field(default_factory=list)  # sent -> started, seconds
    submitted_at: float = 0.0  # its job's: when the baseline would have rendered it
    warnings: list[str] = field(default_factory=list)  # its renderer's, for the studio
