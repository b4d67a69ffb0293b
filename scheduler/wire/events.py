"""Node events on a Redis list: what render nodes tell the scheduler.

Chunks travel to nodes as Celery tasks; events travel back on a plain Redis list,
``renderfarm:events``, in the reliable-queue pattern:

- a node ``LPUSH``es each event (JSON) with one round trip;
- the scheduler moves a batch from the list's tail into ``renderfarm:events:processing``
  atomically (a Lua script), ingests it in one transaction, and only then deletes the
  processing list: in the same script call that takes the next batch, so a busy
  scheduler pays one round trip per batch. A scheduler that dies mid-batch (or
  between its commit and the next take) finds the batch there on restart and ingests
  it again; ingestion, keyed by (chunk, attempt), makes that harmless.

The API rings the scheduler's bell (``SchedulerBell``) when it commits work that may
dispatch (a submission, a resume, a retry): a ``wake`` item on the same list, pushed
only if the list is empty, so an idle scheduler blocked on the list dispatches at
once instead of at its next tick. An operator's drain, disable or enable rings it
naming the node (``{"kind": "wake", "node": name}``), pushed whatever waits: the
scheduler reads that node again before its next dispatch. Wakes are not events.

Why not kombu for this direction: kombu's Redis channel builds a client and runs
three round trips per message (get, unacked bookkeeping, ack), which made event
ingestion the farm's bottleneck (see BENCHMARKS.md); a batch here costs two.
Redis stays a transport: losing the list (a flush) loses only events, which the
scheduler recovers from node heartbeats (running attempts a node no longer lists are
requeued).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

EVENTS_KEY = "renderfarm:events"
PROCESSING_KEY = "renderfarm:events:processing"
DEAD_KEY = "renderfarm:events:dead"

WAKE = "wake"  # the kind of the bell's item
_WAKE_ITEM = json.dumps({"kind": WAKE})


def is_wake(item: Any) -> bool:
    """Whether a decoded item of the event list is the bell's wake, not an event."""
    return isinstance(item, dict) and item.get("kind") == WAKE


def woken_for(wake: dict[str, Any]) -> str | None:
    """The node a wake names (an operator changed it), or None."""
    node = wake.get("node")
    return node if isinstance(node, str) else None


# ARGV[2] == '1': the last batch is committed; drop it. ARGV[3] == '1': a batch left
# in the processing list (unacknowledged: its scheduler died) comes back first. Then
# move up to ARGV[1] of the oldest events (at the tail) to the processing list, oldest
# first, and return them. RPUSH in slices: Lua unpacks at most ~8,000 values.
_TAKE = """
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) end
if ARGV[3] == '1' then
  local pending = redis.call('LRANGE', KEYS[2], 0, -1)
  if #pending > 0 then return pending end
end
local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
local n = #items
if n == 0 then return items end
redis.call('LTRIM', KEYS[1], 0, -n - 1)
local oldest_first = {}
for i = n, 1, -1 do oldest_first[#oldest_first + 1] = items[i] end
for first = 1, n, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(oldest_first, first, math.min(first + 999, n)))
end
return oldest_first
"""

# Move the whole processing list (oldest first) to the end of the dead list, in one
# step: no moment, not even a crash, where the batch is in neither list.
_SET_ASIDE = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end
return n
"""

# The bell: a wake item, unless events wait already (they wake the scheduler anyway).
_RING = """
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('LPUSH', KEYS[1], ARGV[1]) end
"""

log = logging.getLogger(__name__)


def redis_from_url(url: str, socket_timeout: float | None = None) -> redis.Redis:
    """A redis-py client for a Celery/kombu Redis URL (``redis+socket://`` included).

    Its commands are not retried by redis-py (whose default differs between TCP and
    socket URLs): a command that failed after Redis ran it and is then sent again
    could move a second batch into the processing list and return only that one.
    Callers retry whole steps instead.
    """
    parts = urlsplit(url)
    never = Retry(NoBackoff(), 0)
    if parts.scheme in ("redis+socket", "socket"):
        return redis.Redis(
            unix_socket_path=parts.path, health_check_interval=30, retry=never,
            socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
        )  # fmt: skip
    return redis.Redis.from_url(
        url, health_check_interval=30, retry=never,
        socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
    )  # fmt: skip


class EventPublisher:
    """Publishes events from a node; waits up to ``max_wait`` s for the broker to take them.

    A connection error is retried after 0.2 s, then twice as long each time, at most
    5 s apart. An event sent twice (the broker took it but the answer was lost) is
    harmless: ingestion is keyed by (chunk, attempt).
    """

    def __init__(
        self, broker_url: str, max_wait: float = 3600.0, socket_timeout: float | None = None
    ) -> None:
        self._client = redis_from_url(broker_url, socket_timeout)
        self._max_wait = max_wait
        self._backoff = ExponentialBackoff(cap=5.0, base=0.1)  # 0.2, 0.4, 0.8 ... 5 s
        self._retry = Retry(self._backoff, retries=-1)

    def publish(self, events: Iterable[dict[str, Any]]) -> None:
        payloads = [json.dumps(event, separators=(",", ":")) for event in events]
        if not payloads:
            return
        deadline = time.monotonic() + self._max_wait

        def give_up_after_deadline(error: Exception, failures: int) -> None:
            if time.monotonic() > deadline:
                raise error
            pause = self._backoff.compute(failures)
            log.warning("cannot publish events (%s); retrying in %.1f s", error, pause)

        self._retry.call_with_retry(
            lambda: self._client.lpush(EVENTS_KEY, *payloads),
            give_up_after_deadline,
            with_failure_count=True,
        )


class EventConsumer:
    """Takes events in batches for the scheduler; ``ack`` once the batch is committed."""

    def __init__(self, broker_url: str) -> None:
        self._client = redis_from_url(broker_url)
        self._take = self._client.register_script(_TAKE)
        self._set_aside = self._client.register_script(_SET_ASIDE)
        self._acked = False  # the processing list holds a committed batch, to drop

    def fetch(self, limit: int, timeout: float) -> list[dict[str, Any]]:
        """Up to ``limit`` events, oldest first; waits up to ``timeout`` s for the first.

        An unacknowledged batch (left by a scheduler that died) comes back first.
        """
        # Forgotten first: a take that fails after Redis ran it has moved a new batch
        # into the processing list, which the next take must return, not drop.
        acked, self._acked = self._acked, False
        items = self._take(keys=[EVENTS_KEY, PROCESSING_KEY], args=[limit, int(acked), 1])
        if not items and timeout > 0:
            # Redis takes fractional timeouts; redis-py's annotation says int.
            wait: Any = timeout
            first = self._client.blmove(EVENTS_KEY, PROCESSING_KEY, wait, "RIGHT", "RIGHT")
            if first is None:
                return []
            more = (
                self._take(keys=[EVENTS_KEY, PROCESSING_KEY], args=[limit - 1, 0, 0])
                if limit > 1
                else []
            )
            items = [first, *more]
        return _decode(items)

    def ack(self) -> None:
        """The batch is committed: the next ``fetch`` drops it (in the same round trip)."""
        self._acked = True

    def set_aside(self) -> None:
        """Move the batch being processed to ``renderfarm:events:dead`` for inspection:
        a batch that cannot be ingested must not block every batch after it.

        One atomic step (a script): the batch is never in neither list, nor in both."""
        self._set_aside(keys=[PROCESSING_KEY, DEAD_KEY])
        self._acked = False

    def close(self) -> None:
        if self._acked:  # a clean stop leaves no committed batch behind to ingest again
            with contextlib.suppress(redis.RedisError):
                self._client.delete(PROCESSING_KEY)
            self._acked = False
        self._client.close()


class SchedulerBell:
    """Wakes an idle scheduler (see the module's docstring); never fails its caller."""

    def __init__(self, broker_url: str) -> None:
        self._client = redis_from_url(broker_url)
        self._ring = self._client.register_script(_RING)

    def ring(self, node: str | None = None) -> None:
        """Wake the scheduler; naming ``node``, it reads that node again."""
        try:
            if node is None:
                self._ring(keys=[EVENTS_KEY], args=[_WAKE_ITEM])
            else:
                self._client.lpush(EVENTS_KEY, json.dumps({"kind": WAKE, "node": node}))
        except redis.RedisError as error:  # the scheduler's next tick comes anyway, and
            log.debug("could not wake the scheduler: %s", error)  # reads every node in 5 s

    def close(self) -> None:
        self._client.close()


def _decode(items: list[bytes | str]) -> list[dict[str, Any]]:
    events = []
    for item in items:
        try:
            events.append(json.loads(item))
        except ValueError:
            log.error("dropping an event that is not JSON: %r", item[:200])
    return events
