"""The scheduler process: ingest events, dispatch, reconcile, forever.

One loop, run only while this scheduler holds the leader lock (a second one stands
by and takes over when the first dies): wait up to ``tick_seconds`` for node events
(or the API's bell), ingest what came in one transaction, acknowledge it, revoke
renders of cancelled or superseded attempts (five times a second), dispatch into the
freed slots at once, and reconcile (lost nodes, lost messages) about once a second.
Chunk messages are published by a background thread after their dispatch commits. A
broker or database outage is logged and retried; the loop never dies of one.

A turn dispatches when its events changed what may go out (slots freed, a node
appeared or came back, the bell rang), else at most every ``tick_seconds``: ten
thousand nodes' heartbeats alone do not make the scheduler plan ten times a second.

Under load a turn begins at most every ``gather_seconds``: the events of short chunks
arrive one by one, and a turn per event would spend the scheduler's CPU on each
turn's fixed cost (its queries, its commits, its round trips) instead of on the
events. Gathered, a turn ingests and dispatches tens of chunks at once; nodes' queues
hold enough beyond their slots (``queue_buffer``) that no slot waits meanwhile. An
idle scheduler is not paced: the first event or bell after a quiet spell is acted
on at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kombu.exceptions import OperationalError as BrokerError
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseError

from scheduler.db import create_tables, farm_engine
from scheduler.dispatch import metrics
from scheduler.dispatch.carbon_feed import CarbonFeed
from scheduler.dispatch.ingestion import IngestOutcome
from scheduler.dispatch.leader import LeaderLock
from scheduler.dispatch.scheduler import Scheduler
from scheduler.dispatch.webhooks import WebhookSender
from scheduler.settings import Settings
from scheduler.wire.broker import BackgroundSender, CeleryBroker
from scheduler.wire.celery_app import make_celery
from scheduler.wire.events import EventConsumer, redis_from_url

log = logging.getLogger(__name__)

RECONCILE_EVERY_SECONDS = 1.0
STOP_STALE_EVERY_SECONDS = 0.2  # how soon a cancel stops the renders of a job
# After an outage: wait 0.5 s, then twice as long after each failure, at most 10 s.
OUTAGE_BACKOFF = ExponentialBackoff(cap=10.0, base=0.25)


def run_scheduler(settings: Settings, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    engine = farm_engine(settings, "renderfarm-scheduler")
    create_tables(engine)
    app = make_celery(settings)
    broker = BackgroundSender(CeleryBroker(app))
    scheduler = Scheduler(engine, settings, broker)
    consumer = EventConsumer(settings.effective_broker_url)
    leader = LeaderLock(redis_from_url(settings.effective_broker_url), settings.leader_ttl)
    last_reconcile = last_stale = last_dispatch = 0.0
    started, busy = time.perf_counter(), False
    failures = 0  # in a row
    sender = WebhookSender(engine, settings)
    threading.Thread(target=sender.run, args=(stop,), name="webhooks", daemon=True).start()
    if settings.carbon_feed_url:
        feed = CarbonFeed(engine, settings.carbon_feed_url)
        threading.Thread(
            target=feed.run, args=(settings.carbon_feed_seconds, stop), name="carbon-feed",
            daemon=True,
        ).start()  # fmt: skip
    log.info(
        "scheduler running: broker %s, database %s",
        _safe(settings.effective_broker_url),
        _safe(settings.effective_database_url),
    )
    try:
        while not stop.is_set():
            try:
                if not _lead(leader, settings, stop):
                    continue
                rest = settings.gather_seconds - (time.perf_counter() - started)
                if busy and rest > 0:  # gather what arrives while the turn's time runs out
                    stop.wait(rest)
                started = time.perf_counter()
                events = consumer.fetch(settings.event_batch, timeout=settings.tick_seconds)
                busy = bool(events)
                outcome = _ingest(scheduler, consumer, events) if events else None
                if time.monotonic() - last_reconcile >= RECONCILE_EVERY_SECONDS:
                    scheduler.reconcile()
                    last_reconcile = last_stale = time.monotonic()
                elif time.monotonic() - last_stale >= STOP_STALE_EVERY_SECONDS:
                    scheduler.stop_stale_attempts()
                    last_stale = time.monotonic()
                due = time.monotonic() - last_dispatch >= settings.tick_seconds
                if due or (outcome is not None and outcome.dispatch_now):
                    dispatching = time.perf_counter()
                    sent = scheduler.dispatch_tick()
                    metrics.DISPATCH_SECONDS.observe(time.perf_counter() - dispatching)
                    last_dispatch = time.monotonic()
                    metrics.CHUNKS_DISPATCHED.inc(len(sent))
                    metrics.MESSAGES_DISPATCHED.inc(scheduler.messages_in_last_tick)
                metrics.TICK_SECONDS.observe(time.perf_counter() - started)
                failures = 0
            except (BrokerError, RedisError, ConnectionError, OSError) as error:
                failures += 1
                _pause("broker", error, OUTAGE_BACKOFF.compute(failures), stop)
            except DatabaseError as error:
                failures += 1
                _pause("database", error, OUTAGE_BACKOFF.compute(failures), stop)
    finally:
        leader.release()
        broker.close()
        consumer.close()
        engine.dispose()


def _pause(what: str, error: Exception, seconds: float, stop: threading.Event) -> None:
    """Wait out an outage; a stop ends the wait at once (so no redis-py ``Retry``, which
    sleeps)."""
    log.warning("%s unavailable (%s); retrying in %.1f s", what, error, seconds)
    stop.wait(seconds)


def _ingest(
    scheduler: Scheduler, consumer: EventConsumer, events: list[dict[str, Any]]
) -> IngestOutcome | None:
    try:
        outcome = scheduler.ingest(events)
    except (BrokerError, RedisError, ConnectionError, OSError, DatabaseError):
        raise  # an outage: the batch stays pending and comes back
    except Exception:
        log.exception("setting aside a batch of %d events that cannot be ingested", len(events))
        consumer.set_aside()
        return None
    consumer.ack()
    metrics.EVENTS_INGESTED.inc(outcome.applied)
    metrics.EVENTS_IGNORED.inc(outcome.ignored)
    for seconds in outcome.dispatch_latencies:
        metrics.DISPATCH_LATENCY.observe(seconds)
    return outcome


def _lead(leader: LeaderLock, settings: Settings, stop: threading.Event) -> bool:
    """True while this scheduler leads; a standby waits here for the lock."""
    if leader.held:
        if leader.keep():
            return True
        log.warning("lost the leader lock; standing by")
    if leader.try_acquire():
        log.info("leading as %s", leader.identity)
        return True
    stop.wait(min(1.0, settings.leader_ttl / 4))
    return False


def _safe(url: str) -> str:
    """A URL without its password, for logs."""
    return str(maybe_sanitize_url(url))
