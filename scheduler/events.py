"""Node events on the durable queue ``renderfarm.events``: publishing and consuming.

Events go straight to the queue through the default exchange (no binding to lose
when Redis is flushed). The consumer acknowledges a batch only after the scheduler
has committed it, so a scheduler that dies mid-batch gets the batch again, and
ingestion, keyed by (chunk, attempt), makes the repeat harmless.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.simple import SimpleQueue

from scheduler.messages import EVENTS_QUEUE

EVENTS = Queue(EVENTS_QUEUE, Exchange(""), routing_key=EVENTS_QUEUE, durable=True)


def publish_events(app: Celery, events: Iterable[dict[str, Any]]) -> None:
    with app.producer_or_acquire() as producer:
        for event in events:
            producer.publish(
                event,
                exchange="",
                routing_key=EVENTS_QUEUE,
                serializer="json",
                delivery_mode=2,
                retry=True,
                retry_policy={"max_retries": None, "interval_start": 0.2, "interval_max": 2},
                declare=[EVENTS],
            )


class EventConsumer:
    """Fetches events in batches; ``ack`` after the batch is committed."""

    def __init__(self, app: Celery) -> None:
        self._connection = app.connection_for_read()
        self._queue: SimpleQueue | None = None

    def _simple(self) -> SimpleQueue:
        if self._queue is None:
            self._connection.ensure_connection(max_retries=None)
            self._queue = self._connection.SimpleQueue(EVENTS, no_ack=False)
        return self._queue

    def fetch(self, limit: int, timeout: float) -> list[Any]:
        """Up to ``limit`` messages: waits ``timeout`` for the first, none for the rest."""
        queue = self._simple()
        messages: list[Any] = []
        try:
            messages.append(queue.get(block=True, timeout=timeout))
            while len(messages) < limit:
                messages.append(queue.get_nowait())
        except (TimeoutError, queue.Empty):
            pass
        return messages

    def reset(self) -> None:
        """Drop the channel after a broker error; the next fetch reconnects."""
        if self._queue is not None:
            with contextlib.suppress(Exception):  # the connection is already broken
                self._queue.close()
        self._queue = None
        self._connection.collect()

    def close(self) -> None:
        self.reset()
        self._connection.release()
