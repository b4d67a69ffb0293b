"""The broker adapter the scheduler dispatches through (Celery on Redis).

Chunk messages are published to their node's queue (``node.<name>``: the scheduler
places every chunk on a node) through the default exchange, so they land in the
queue even after Redis lost its exchange bindings (a restart or FLUSHALL): Celery's
per-connection cache of declared queues would otherwise route them nowhere.

Messages are Celery's own (protocol 2, made by ``app.amqp.create_task_message``), so
workers, Flower and ``celery inspect`` read them as any task; they are published
straight through kombu, not through ``send_task``, whose routing, queue entities and
signals cost three times what building and publishing the message does, to decide
what the scheduler has decided already (the node's queue).

A batch of messages goes out in one pipelined round trip (kombu's ``Producer.batch``):
the scheduler sends a tick's chunks together, and one Redis round trip per chunk was
a fifth of its CPU (BENCHMARKS.md). If the batch fails, delivery is uncertain: it is
sent again message by message, each retried until the broker takes it; a message
delivered twice is one attempt run twice, which ingestion counts once.

Chunks the scheduler groups go as one message of ``renderfarm.render_chunks``
(scheduler/wire/messages.py), whose task id names them all; the scheduler revokes it
by that id (scheduler/dispatch/reconciling.py).

Each message carries a readable ``argsrepr`` (``job 12 chunk 345 frames 1-4 attempt
2``), which Flower and ``celery inspect active`` show for what a node renders; it also
spares Celery a ``saferepr`` of every message.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from celery import Celery
from kombu import Exchange, Producer, Queue
from kombu.exceptions import BatchPublishError

from scheduler.core.frames import format_frame_spec
from scheduler.wire.messages import (
    RENDER_CHUNKS_TASK,
    RENDER_TASK,
    ChunkMessage,
    bundle_task_id,
    task_id_for,
)

log = logging.getLogger(__name__)

BATCH_COMMANDS = 500  # Redis commands per pipelined round trip
PERSISTENT = 2  # AMQP's delivery mode, as Celery sends tasks
RETRY_POLICY = {"max_retries": None, "interval_start": 0.2, "interval_max": 2}
# A slow bundle's chunks handed back by a node: a few tries, then they render where they are.
HAND_BACK_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_max": 1}


def describe_chunk(message: ChunkMessage) -> str:
    """What a message renders, for people: ``job 12 chunk 345 frames 1-4 attempt 2``."""
    if len(message.frames) == 1:
        frames = f"frame {message.frames[0]}"
    else:
        frames = f"frames {format_frame_spec(message.frames)}"
    return f"job {message.job_id} chunk {message.chunk_id} {frames} attempt {message.attempt}"


def describe_bundle(messages: Sequence[ChunkMessage]) -> str:
    """``job 12 chunks 345-352 frames 1-8 (8 chunks)``: a bundle's chunks are one job's."""
    chunks = format_frame_spec(sorted(m.chunk_id for m in messages))
    frames = format_frame_spec(sorted({f for m in messages for f in m.frames}))
    return f"job {messages[0].job_id} chunks {chunks} frames {frames} ({len(messages)} chunks)"


def queue_entity(name: str) -> Queue:
    """A queue reached through the default exchange: no binding to lose in a flush."""
    return Queue(name, Exchange(""), routing_key=name, durable=True)


class Broker(Protocol):
    """What the scheduler needs from a broker. ``send`` takes the messages to publish,
    each a sequence of chunk messages for one node: one chunk, or a bundle."""

    def send(self, messages: Sequence[Sequence[ChunkMessage]]) -> None: ...

    def revoke(self, task_ids: Sequence[str]) -> None: ...

    def queue_depths(self, queues: Sequence[str]) -> dict[str, int]: ...

    def drop_queues(self, queues: Sequence[str]) -> None: ...


class CeleryBroker:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(
        self, messages: Sequence[Sequence[ChunkMessage]], retry: dict[str, Any] = RETRY_POLICY
    ) -> None:
        if not messages:
            return
        with self.app.producer_or_acquire() as producer:
            try:
                with producer.batch(max_size=BATCH_COMMANDS):
                    self._publish(producer, messages, retry)
            except BatchPublishError as error:
                log.warning("a batch of %d message(s) failed (%s); sending one by one",
                            len(messages), error.__cause__ or error)  # fmt: skip
                self._publish(producer, messages, retry)

    def _publish(
        self, producer: Producer, messages: Sequence[Sequence[ChunkMessage]], retry: dict[str, Any]
    ) -> None:
        for chunks in messages:
            args: list[Any]
            if len(chunks) == 1:
                message = chunks[0]
                task_id = task_id_for(message.chunk_id, message.attempt)
                task, args = RENDER_TASK, [message.to_dict()]
                argsrepr = describe_chunk(message)
            else:
                task_id = bundle_task_id([(m.chunk_id, m.attempt) for m in chunks])
                task, args = RENDER_CHUNKS_TASK, [[m.to_dict() for m in chunks]]
                argsrepr = describe_bundle(chunks)
            headers, properties, body, _event = self.app.amqp.create_task_message(
                task_id, task, args, {}, argsrepr=argsrepr, kwargsrepr="{}"
            )
            producer.publish(
                body,
                exchange="",  # the default exchange: straight to the node's queue
                routing_key=chunks[0].queue,
                headers=headers,
                serializer="json",
                delivery_mode=PERSISTENT,
                retry=True,
                retry_policy=retry,
                **properties,
            )

    def revoke(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            self.app.control.revoke(list(task_ids), terminate=True, signal="SIGTERM")

    def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each queue (one never declared, or flushed away: none),
        in one pipelined round trip: reconcile asks this of every node queue holding
        unclaimed chunks, each second, and a rack gone silent is hundreds of them.
        kombu's Redis transport keeps a queue as one list per priority step."""
        if not queues:
            return {}
        with self.app.pool.acquire(block=True) as connection:  # its channel kept
            try:
                channel = connection.default_channel
                steps = list(channel.priority_steps)
                with channel.conn_or_acquire() as client, client.pipeline() as pipe:
                    for name in queues:
                        for step in steps:
                            pipe.llen(channel._q_for_pri(name, step))
                    sizes = pipe.execute()
            except connection.connection_errors:  # not kept: the next call connects anew
                connection.collect()
                raise
        per = len(steps)
        return {name: sum(sizes[i * per : (i + 1) * per]) for i, name in enumerate(queues)}

    def drop_queues(self, queues: Sequence[str]) -> None:
        """Delete queues and what they hold: those of nodes that left, whose messages the
        farm has sent elsewhere (a pool scaled up and down names a new node each time,
        and its queue would stay in Redis for ever)."""
        if not queues:
            return
        with self.app.pool.acquire(block=True) as connection:
            try:
                channel = connection.default_channel
                with channel.conn_or_acquire() as client, client.pipeline() as pipe:
                    for name in queues:
                        for step in channel.priority_steps:
                            pipe.delete(channel._q_for_pri(name, step))
                    pipe.execute()
            except connection.connection_errors:
                connection.collect()
                raise


class BackgroundSender:
    """A Broker whose ``send`` returns at once; a thread publishes in order.

    The scheduler commits a dispatch before sending it, so the loop need not wait
    for the broker's round trips: it goes back to ingesting events while the thread
    publishes. A message lost with the process (or the broker) is found by the
    reconcile step as "sent but never claimed" and sent again.
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._outbox: queue.Queue[Sequence[Sequence[ChunkMessage]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="chunk-sender", daemon=True)
        self._thread.start()

    def send(self, messages: Sequence[Sequence[ChunkMessage]]) -> None:
        if messages:
            self._outbox.put(messages)

    def revoke(self, task_ids: Sequence[str]) -> None:
        self._broker.revoke(task_ids)

    def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        return self._broker.queue_depths(queues)

    def drop_queues(self, queues: Sequence[str]) -> None:
        self._broker.drop_queues(queues)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is waiting, then stop the thread."""
        self._outbox.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (messages := self._outbox.get()) is not None:
            try:
                self._broker.send(messages)
            except Exception:  # reconcile resends what never arrived
                log.exception("sending %d message(s) failed", len(messages))
