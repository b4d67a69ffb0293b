"""The baseline of bench/dispatch.py: a bare Celery app whose task does nothing but count.

Configured like the farm's own app (acks_late, prefetch 1, reject on worker lost, no
result backend); completion is counted with one Redis INCR per task.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from scheduler.settings import Settings
from scheduler.wire.celery_app import make_celery

COUNTER = "bench:celery-noop:done"

app: Celery = make_celery(
    Settings(_env_file=None, broker_url=os.environ["BENCH_BROKER_URL"]),  # type: ignore[call-arg]
    main="bench-noop",
)
_counter = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@app.task(name="bench.noop", acks_late=True)
def noop(index: int) -> None:
    _counter.incr(COUNTER)


STAMPS = "bench:celery-noop:started"


@app.task(name="bench.stamp", acks_late=True)
def stamp(sent_at: float) -> None:
    """Records when it started (the floor of bench/latency.py)."""
    _counter.rpush(STAMPS, repr(time.time() - sent_at))
