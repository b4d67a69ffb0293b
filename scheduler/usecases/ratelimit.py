"""Requests per second per studio, shared by every API process through Redis.

A fixed one-second window per studio (``INCR`` and ``EXPIRE`` in one round trip): past
the studio's rate, a request is refused with 429 and ``Retry-After: 1``. Simple and
shared by all API processes, at the cost of a burst of up to twice the rate across a
window's edge. Where Redis does not answer, requests are let through (logged once a
minute): the database, not the broker, is what a refused request would protect.
"""

from __future__ import annotations

import logging
import time

import redis

from scheduler.errors import TooMany
from scheduler.wire.events import redis_from_url

log = logging.getLogger(__name__)

KEY = "renderfarm:rate:{studio_id}:{second}"
TIMEOUT = 0.5  # seconds a check may wait for Redis


class RateLimiter:
    def __init__(self, broker_url: str) -> None:
        self._client = redis_from_url(broker_url)
        pool = self._client.connection_pool
        pool.connection_kwargs.update(socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        self._warned = 0.0

    def check(self, studio_id: int, per_second: int | None) -> None:
        """``TooMany`` if the studio is past ``per_second`` requests this second."""
        if per_second is None:
            return
        key = KEY.format(studio_id=studio_id, second=int(time.time()))
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, 2)
            count = int(pipe.execute()[0])
        except (redis.RedisError, OSError) as error:
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning("rate limits not applied: Redis does not answer (%s)", error)
            return
        if count > per_second:
            raise TooMany(f"more than {per_second} requests a second from this studio", 1)
