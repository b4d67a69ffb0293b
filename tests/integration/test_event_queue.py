"""The node event queue on a real Redis: a poison batch is set aside in one step, a
committed batch leaves with the next take, the API's bell wakes a waiting scheduler, and
a publisher outlasts a broker that goes away and comes back."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import redis

from scheduler.dispatch.ingestion import split_events
from scheduler.launch.embedded import EmbeddedRedis
from scheduler.settings import Settings
from scheduler.wire.events import (
    DEAD_KEY,
    EVENTS_KEY,
    PROCESSING_KEY,
    WAKE,
    EventConsumer,
    EventPublisher,
    SchedulerBell,
)
from tests.conftest import redis_client, wait_for
from workers.processes import stop_process

pytestmark = pytest.mark.integration


def test_a_batch_set_aside_is_never_in_neither_list(
    settings: Settings, broker: redis.Redis
) -> None:
    """Another client watching the queue's three lists never sees a set-aside batch
    vanish from them: it leaves the processing list and joins the dead list at once."""
    publisher = EventPublisher(settings.effective_broker_url)
    consumer = EventConsumer(settings.effective_broker_url)
    watcher = redis_client(settings.effective_broker_url)
    done = threading.Event()
    dips: list[tuple[int, int]] = []

    def watch() -> None:
        seen = 0
        while not done.is_set():
            with watcher.pipeline(transaction=True) as pipe:  # one consistent view
                for key in (EVENTS_KEY, PROCESSING_KEY, DEAD_KEY):
                    pipe.llen(key)
                total = sum(pipe.execute())
            if total < seen:  # only publishing changes the total
                dips.append((seen, total))
            seen = total

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        rounds, size = 200, 20
        for n in range(rounds):
            publisher.publish({"kind": "started", "round": n, "i": i} for i in range(size))
            assert len(consumer.fetch(size, 0.5)) == size
            consumer.set_aside()
    finally:
        done.set()
        thread.join(5)
    assert dips == []
    assert broker.llen(PROCESSING_KEY) == 0
    dead = [json.loads(item) for item in broker.lrange(DEAD_KEY, 0, -1)]
    assert [(e["round"], e["i"]) for e in dead] == [
        (n, i) for n in range(rounds) for i in range(size)
    ]  # in order, none lost, none twice
    consumer.close()


def test_a_batch_larger_than_lua_can_unpack_is_taken_whole(
    settings: Settings, broker: redis.Redis
) -> None:
    """``RENDERFARM_EVENT_BATCH`` of 10,000: one script call moves them all, in order."""
    publisher = EventPublisher(settings.effective_broker_url)
    consumer = EventConsumer(settings.effective_broker_url)
    publisher.publish({"kind": "started", "i": i} for i in range(10_000))
    assert [e["i"] for e in consumer.fetch(10_000, 0.5)] == list(range(10_000))
    assert broker.llen(PROCESSING_KEY) == 10_000 and broker.llen(EVENTS_KEY) == 0
    consumer.ack()
    consumer.close()


def test_a_publisher_waits_for_the_broker_to_come_back(caplog: pytest.LogCaptureFixture) -> None:
    """Events published while Redis is down arrive once it is back: none is lost."""
    caplog.set_level(logging.WARNING, "scheduler.wire.events")
    server = EmbeddedRedis()
    server.start()
    try:
        publisher = EventPublisher(server.url, max_wait=60)
        publisher.publish([{"kind": "heartbeat", "n": 0}])  # gone with the server
        assert server.process is not None
        stop_process(server.process)
        published = threading.Event()

        def publish() -> None:
            publisher.publish([{"kind": "heartbeat", "n": 1}])
            published.set()

        threading.Thread(target=publish, daemon=True).start()
        wait_for(
            lambda: len([r for r in caplog.records if "cannot publish" in r.message]) >= 3,
            15,
            "the publisher to retry",
        )
        assert not published.is_set()
        server.start()  # an empty Redis on the same socket
        wait_for(published.is_set, 15, "the publisher to get through")
        client = redis_client(server.url)
        assert client.lrange(EVENTS_KEY, 0, -1) == [b'{"kind":"heartbeat","n":1}']
    finally:
        server.stop()


def test_a_publisher_gives_up_after_max_wait() -> None:
    server = EmbeddedRedis()
    server.start()
    publisher = EventPublisher(server.url, max_wait=0.5)
    server.stop()
    with pytest.raises(redis.ConnectionError):
        publisher.publish([{"kind": "heartbeat"}])


def test_a_committed_batch_is_dropped_by_the_next_take(
    settings: Settings, broker: redis.Redis
) -> None:
    """``ack`` costs no round trip: the next fetch drops the batch and takes the next
    one in one script call; until then a restart would find it (and ingest it again,
    harmlessly); a clean stop drops it."""
    publisher = EventPublisher(settings.effective_broker_url)
    consumer = EventConsumer(settings.effective_broker_url)
    publisher.publish([{"kind": "started", "n": 1}, {"kind": "started", "n": 2}])
    assert [e["n"] for e in consumer.fetch(10, 0.5)] == [1, 2]
    consumer.ack()
    assert broker.llen(PROCESSING_KEY) == 2  # committed, not yet dropped
    publisher.publish([{"kind": "started", "n": 3}])
    assert [e["n"] for e in consumer.fetch(10, 0.5)] == [3]  # 1 and 2 dropped, not again
    assert [json.loads(i)["n"] for i in broker.lrange(PROCESSING_KEY, 0, -1)] == [3]
    consumer.ack()
    consumer.close()
    assert broker.llen(PROCESSING_KEY) == 0


def test_the_bell_wakes_a_waiting_scheduler_once_and_is_no_event(
    settings: Settings, broker: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer blocked on the list returns as the bell rings; a second ring while the
    first waits adds nothing; wakes are neither events nor ignored ones."""
    consumer = EventConsumer(settings.effective_broker_url)
    bell = SchedulerBell(settings.effective_broker_url)
    taken: list[list[dict[str, object]]] = []
    waiting = threading.Thread(target=lambda: taken.append(consumer.fetch(10, 30.0)))
    waiting.start()
    wait_for(lambda: _blocked(broker), 10, "a blocked fetch")
    bell.ring()
    waiting.join(10)
    assert not waiting.is_alive() and taken == [[{"kind": WAKE}]]
    consumer.ack()
    bell.ring()
    bell.ring()
    assert broker.llen(EVENTS_KEY) == 1  # one wake is enough
    EventPublisher(settings.effective_broker_url).publish([{"kind": "started", "n": 1}])
    bell.ring()  # events wait: they wake the scheduler themselves
    assert broker.llen(EVENTS_KEY) == 2
    bell.ring("gz-07")  # an operator changed a node: it goes whatever waits
    assert broker.llen(EVENTS_KEY) == 3
    caplog.set_level(logging.ERROR, "scheduler.dispatch.ingestion")
    chunk_events, beats, wakes = split_events(consumer.fetch(10, 0.5))
    assert (len(chunk_events), beats) == (0, [])  # the started event is malformed, the wake none
    assert wakes == [None, "gz-07"]
    assert [r.getMessage() for r in caplog.records if "wake" in r.getMessage()] == []
    consumer.close()
    bell.close()


def _blocked(broker: redis.Redis) -> bool:
    return any(c.get("cmd") == "blmove" for c in broker.client_list(_type="normal"))
