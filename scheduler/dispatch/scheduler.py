"""The scheduler's use cases: dispatch a tick, ingest node events, reconcile.

Each use case is one transaction: load what it needs, ask the pure core, commit the
decision, and only then talk to the broker. If the process dies between the commit
and the send, the chunk is "dispatched" with no message anywhere; ``reconcile``
notices it (unclaimed for ``redispatch_after`` seconds with its queue empty)
and sends it again as a new attempt. The work itself is in dispatching.py,
ingestion.py and reconciling.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine
from sqlmodel import Session

from scheduler.core.bundles import JobPace, bundle_groups
from scheduler.core.pace import CompletionRate
from scheduler.core.placement import NodeView
from scheduler.core.policy import passes_after, plan_dispatch, queue_buffer
from scheduler.dispatch.dispatching import (
    Group,
    NodeRoster,
    load_dispatch_snapshot,
    save_dispatch,
    save_held_jobs,
)
from scheduler.dispatch.ingestion import (
    IngestOutcome,
    apply_chunk_events,
    save_heartbeats,
    split_events,
)
from scheduler.dispatch.reconciling import (
    close_stale_attempts,
    forget_departed_nodes,
    mark_lost_nodes,
    requeue_from_disabled,
    requeue_unclaimed,
    unwanted_bundles_of,
)
from scheduler.dispatch.siting import Siting
from scheduler.settings import Settings
from scheduler.usecases.billing import FrameBiller
from scheduler.wire.broker import Broker
from scheduler.wire.messages import BUNDLE_MAX, ChunkMessage, NodeLife, node_queue, task_id_for

# How long the regions' figures bill frames before they are read again: a region's
# new price or carbon intensity applies to the frames ingested a second later at most.
BILLER_SECONDS = 1.0
FORGET_EVERY_SECONDS = 60.0  # how often nodes long gone are looked for and forgotten


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        broker: Broker,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.broker = broker
        self.clock = clock
        self.rates = CompletionRate(turn=settings.gather_seconds)
        self.paces = JobPace()  # which jobs' chunks are short enough to bundle
        # Fair-share stride passes, carried between ticks; a restart starts them afresh.
        self.passes: dict[tuple[int, str], float] = {}
        self.siting = Siting()  # placement policies' figures, kept half a minute
        self.roster = NodeRoster()  # live nodes and what they offer, kept between ticks
        self._billing: tuple[float, FrameBiller] | None = None  # since when, figures
        self.messages_in_last_tick = 0  # what the last tick's chunks went in (bundles.py)
        self._forgotten_at = -math.inf  # when departed nodes were last forgotten

    def dispatch_tick(self) -> list[ChunkMessage]:
        """Fill each node's queue up to its free slots; returns what was sent."""
        now = self.clock()
        self.rates.note_tick(now)
        with Session(self.engine) as session:
            snapshot, jobs, held = load_dispatch_snapshot(
                session,
                now,
                self.settings,
                lambda pool: self._buffer(pool, now),
                self.passes,
                self.siting,
                self.roster,
            )
            save_held_jobs(session, held, now)
            assignments = plan_dispatch(snapshot, now)
            if not assignments:
                session.commit()
                self.messages_in_last_tick = 0
                return []
            self.passes = passes_after(snapshot, assignments)
            together = self._together(snapshot.room.live.views)
            sent = save_dispatch(session, assignments, jobs, now, together)
            session.commit()
        self.broker.send(sent)
        self.messages_in_last_tick = len(sent)
        return [message for chunks in sent for message in chunks]

    def _together(self, views: Mapping[str, NodeView]) -> Group:
        """Which of a dispatch's chunks share a message: a node's chunks of a job whose
        latest took milliseconds, several to one, as many as the node takes."""

        def most(node: str, job: int) -> int:
            view = views.get(node)
            if view is None:  # not placed by this dispatch: nothing to bundle
                return 1
            taken = min(view.bundle, BUNDLE_MAX)
            return self.paces.bundle_size(job, self.settings.bundle_seconds, taken)

        def slots(node: str) -> int:
            view = views.get(node)
            return view.slots if view is not None else 1

        return lambda placed: bundle_groups(placed, most, slots)

    def _buffer(self, pool: str, now: float) -> int:
        return queue_buffer(
            self.rates.per_second(pool, now),
            self.rates.tick,
            self.settings.dispatch_buffer,
            self.settings.max_dispatch_buffer,
        )

    def ingest(self, events: Sequence[dict[str, Any]]) -> IngestOutcome:
        """Apply a batch of node events in one transaction; duplicates change nothing.

        Chunk events go first: a heartbeat that no longer lists an attempt was sent
        after that attempt's last event, so the event must be applied before it.
        """
        now = self.clock()
        chunk_events, beats, wakes = split_events(events)
        outcome = IngestOutcome(
            ignored=len(events) - len(wakes) - len(chunk_events) - len(beats), woken=bool(wakes)
        )
        with Session(self.engine) as session:
            try:
                if chunk_events:
                    retry = (self.settings.retry_base_seconds, self.settings.retry_max_seconds)
                    biller = self._biller(now)
                    apply_chunk_events(session, chunk_events, now, outcome, retry, biller)
                outcome.nodes_changed = save_heartbeats(session, beats, now)
                # Renders no longer wanted are stopped, and the bundles carrying them
                # once nothing they carry is wanted (a node back with a bundle sent
                # before its attempts were closed, whose revoke it never heard).
                bundles = unwanted_bundles_of(session, outcome.unwanted)
                session.commit()
            except Exception:
                self._billing = None  # it may know a region whose row was rolled back
                raise
        # Nodes that changed, and those an operator drained, disabled or enabled.
        self.roster.changed({*outcome.nodes_changed, *(node for node in wakes if node)})
        self.rates.record(now, outcome.held)
        self.paces.record(now, outcome.held_by_job)
        if outcome.unwanted:
            self.broker.revoke([task_id_for(*attempt) for attempt in outcome.unwanted] + bundles)
        latest = {beat.info.name: beat.life for beat in beats}
        if left := [node_queue(name) for name, life in latest.items() if life == NodeLife.LEFT]:
            self.broker.drop_queues(left)  # what they held went elsewhere: stale, all of it
        return outcome

    def _biller(self, now: float) -> FrameBiller:
        """The regions' figures and studios' homes, read again each ``BILLER_SECONDS``
        (not each batch: a busy scheduler ingests ten batches a second)."""
        if self._billing is None or now - self._billing[0] >= BILLER_SECONDS:
            self._billing = (now, FrameBiller(ZoneInfo(self.settings.billing_timezone)))
        return self._billing[1]

    def reconcile(self) -> None:
        """Mark lost nodes and requeue their chunks; requeue what the broker lost."""
        now = self.clock()
        with Session(self.engine) as session:
            self.roster.changed(mark_lost_nodes(session, now, self.settings.node_timeout))
            forgotten: list[str] = []
            if now - self._forgotten_at >= FORGET_EVERY_SECONDS:
                self._forgotten_at = now
                forgotten = forget_departed_nodes(session, now, self.settings.forget_nodes_after)
            requeue_from_disabled(session, now)
            after = self.settings.redispatch_after
            requeue_unclaimed(session, now, after, self.broker.queue_depths)
            # Their attempts closed in the same transaction: a studio's cancel committed
            # between the two left chunks as one order made them and attempts as the
            # other (a race test saw it once under load).
            task_ids = close_stale_attempts(session, now)
            session.commit()
        self.broker.revoke(task_ids)
        self.broker.drop_queues([node_queue(name) for name in forgotten])

    def stop_stale_attempts(self) -> list[str]:
        """Revoke attempts whose chunk moved on (cancelled, requeued, superseded).

        Cheap enough to run several times a second, so a cancel stops renders at once.
        """
        with Session(self.engine) as session:
            task_ids = close_stale_attempts(session, self.clock())
            session.commit()
        self.broker.revoke(task_ids)
        return task_ids
