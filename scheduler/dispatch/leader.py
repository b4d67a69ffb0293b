"""One active scheduler: a leader lock in Redis, held while renewed.

The holder renews the lock when a fifth of ``ttl`` has passed since it last did
(``keep``, asked every loop turn); a scheduler that dies (or stalls past ``ttl``)
loses it, and a standby polling ``try_acquire`` takes over within about ``ttl``
seconds. The lock is a token-checked ``SET NX PX`` (redis-py's ``Lock``), so
a scheduler can only renew or release a lock it still owns. Two schedulers that
briefly both believe they lead (the old one not yet noticing) cannot dispatch a
chunk twice: claims are compare-and-set in the database, which stays the truth.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import socket
import time
from collections.abc import Callable

import redis
from redis.exceptions import LockError
from redis.lock import Lock

LEADER_KEY = "renderfarm:scheduler:leader"


class LeaderLock:
    def __init__(
        self,
        client: redis.Redis,
        ttl: float,
        key: str = LEADER_KEY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Unique per lock, not per process: a scheduler restarted in the same process
        # (the embedded farm, tests) must not renew or release its predecessor's hold.
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._lock = Lock(client, key, timeout=ttl, blocking=False, thread_local=False)
        self.held = False
        self._renew_every = ttl / 5
        self._clock = clock
        self._renewed = -math.inf

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
        self.held = bool(self._lock.acquire(blocking=False, token=self.identity))
        self._renewed = self._clock()
        return self.held

    def renew(self) -> bool:
        """Extend our hold to a full ``ttl``; False once it is lost (expired, taken, flushed)."""
        try:
            self._lock.reacquire()
        except LockError:
            self.held = False
        self._renewed = self._clock()
        return self.held

    def keep(self) -> bool:
        """Whether we still lead: renewed if a fifth of ``ttl`` has passed since the
        last renewal; in between, the lock cannot have expired. (A flush could take it
        sooner: a second leader then claims nothing the first claimed, see above.)"""
        if self._clock() - self._renewed < self._renew_every:
            return self.held
        return self.renew()

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(LockError):  # expired meanwhile: nothing to release
                self._lock.release()
            self.held = False
