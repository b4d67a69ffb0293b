"""How far the frames being rendered are: volatile counts in Redis, never in the database.

A node reads its renderer's output for sample counts (Blender's ``Fra:12 ... Sample
96/400``) and posts them to the job's hash ``renderfarm:progress:<job_id>``: field =
the frame number, value = JSON ``{"done", "total", "node", "attempt", "at"}`` (``done``
of ``total`` samples, ``at`` the node's clock), and ``"status_line"`` where the renderer
said what it is doing (an OpenJD task's ``openjd_status`` line; OpenJD's
``openjd_progress`` percentage is ``done`` of 100). ``ChunkProgress`` keeps the latest count
of each frame of an attempt and posts what changed at most every ``POST_EVERY`` s (the
last count always goes out once that time has passed), all frames in one round trip;
a frame counts as whole once it is saved, and the attempt's fields go as it ends
(those a newer attempt of the chunk wrote stay). The hash expires ``TTL`` s after its
last post, so a node that dies leaves nothing behind for long.

The API reads a job's hash with one HGETALL per listing (``progress_board(url).read``) and
shows a count only for a frame still running in the attempt that posted it: the
database's states stay the truth (ARCHITECTURE.md), a count only says how far.
Losing Redis, or a count, costs the display and nothing else: a post that fails is
dropped (the next one says more), a read that fails answers no counts.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from scheduler.wire.events import redis_from_url

PROGRESS_KEY = "renderfarm:progress:{job_id}"
POST_EVERY = 1.0  # seconds between an attempt's posts
TTL = 120  # seconds a job's hash outlives its last post
REFRESH_EVERY = 30.0  # an attempt whose counts stand still keeps its hash alive
TIMEOUT = 1.0  # seconds a post or a read may wait for Redis: progress is not worth more
STATUS_LINE_MAX = 300  # characters of a status line kept: a line for a listing, not a log

# KEYS[1]: the job's hash. ARGV: seconds to live, the attempt, how many (frame, value)
# pairs follow to set, the pairs, then frames whose field goes if this attempt wrote
# it (a newer attempt of the chunk may have posted since).
_POST = """
local key, ttl, attempt, pairs = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
for _ = 1, pairs do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  i = i + 2
end
for j = i, #ARGV do
  local value = redis.call('HGET', key, ARGV[j])
  if value and cjson.decode(value)['attempt'] == attempt then
    redis.call('HDEL', key, ARGV[j])
  end
end
redis.call('EXPIRE', key, ttl)
return 0
"""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FrameProgress:
    """How far one frame is: ``done`` of ``total`` (samples), by ``node`` in ``attempt``,
    and what its renderer last said it is doing (``status_line``), if it says."""

    frame: int
    done: int
    total: int
    node: str
    attempt: int
    at: float
    status_line: str | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, max(0.0, self.done / self.total)) if self.total > 0 else 0.0

    def to_json(self) -> str:
        """The hash's value; ``status_line`` only where there is one, so a reader that
        predates it reads the same fields as before."""
        fields: dict[str, Any] = {"done": self.done, "total": self.total, "node": self.node}
        fields.update(attempt=self.attempt, at=self.at)
        if self.status_line is not None:
            fields["status_line"] = self.status_line
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def from_json(cls, frame: int, text: str | bytes) -> FrameProgress | None:
        """The count a node posted (with or without a status line); None for anything else."""
        try:
            data: Any = json.loads(text)
            progress = cls(
                frame, data["done"], data["total"], data["node"], data["attempt"], data["at"],
                data.get("status_line"),
            )  # fmt: skip
        except (ValueError, TypeError, KeyError):
            return None
        numbers = (progress.done, progress.total, progress.attempt)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            return None
        if not isinstance(progress.node, str) or not isinstance(progress.at, (int, float)):
            return None
        if progress.status_line is not None and not isinstance(progress.status_line, str):
            return None
        return progress


class Board(Protocol):
    """Where an attempt's counts go (``ProgressBoard``; a fake in tests)."""

    def post(
        self, job_id: int, attempt: int, counts: Sequence[FrameProgress], gone: Sequence[int]
    ) -> None: ...


class ProgressBoard:
    """The farm's frame counts in Redis (the broker's): nodes post, the API reads."""

    def __init__(self, broker_url: str, timeout: float = TIMEOUT) -> None:
        self._client = redis_from_url(broker_url)
        pool: Any = self._client.connection_pool
        pool.connection_kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout)
        self._post = self._client.register_script(_POST)

    def post(
        self, job_id: int, attempt: int, counts: Sequence[FrameProgress], gone: Sequence[int]
    ) -> None:
        """Set ``counts``, remove the fields of frames ``gone`` that this attempt wrote,
        and keep the hash another ``TTL`` s; one round trip. Raises ``redis.RedisError``."""
        pairs = [item for c in counts for item in (str(c.frame), c.to_json())]
        args: list[str | int] = [TTL, attempt, len(counts), *pairs, *map(str, gone)]
        self._post(keys=[PROGRESS_KEY.format(job_id=job_id)], args=args)

    def read(self, job_id: int) -> dict[int, FrameProgress]:
        """The counts posted for the job's frames, by frame; none if Redis does not answer."""
        try:
            fields = self._client.hgetall(PROGRESS_KEY.format(job_id=job_id))
        except (redis.RedisError, OSError) as error:
            log.warning("frame progress of job %d unknown: %s", job_id, error)
            return {}
        counts = {}
        for field, value in fields.items():
            try:
                frame = int(field)
            except ValueError:
                continue
            progress = FrameProgress.from_json(frame, value)
            if progress is not None:
                counts[frame] = progress
        return counts

    def close(self) -> None:
        self._client.close()


@functools.cache
def progress_board(broker_url: str) -> ProgressBoard:
    """The board of the farm at ``broker_url``, one per process (its connections are
    kept for the next reader), built on first use."""
    return ProgressBoard(broker_url)


class ChunkProgress:
    """One attempt's frame counts on their way to the board.

    ``update`` keeps the latest count of a frame and its status line, if any (it may be
    called from another thread, the one reading the renderer's output); ``flush`` posts
    the counts that changed once ``every`` s have passed since the last post (call it
    often: the last count goes out at the first call after that); ``finish`` counts a
    saved frame as whole; ``close`` removes the attempt's fields. A failure to post is
    logged once and dropped: the render goes on regardless, and the next post says more.
    """

    def __init__(
        self,
        board: Board,
        job_id: int,
        attempt: int,
        node: str,
        every: float = POST_EVERY,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.board = board
        self.job_id = job_id
        self.attempt = attempt
        self.node = node
        self.every = every
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._latest: dict[int, FrameProgress] = {}
        self._changed: set[int] = set()
        self._finished: set[int] = set()
        self._posted: set[int] = set()  # frames whose field this attempt may have set
        self._last_post = -math.inf
        self._failing = False

    def update(self, frame: int, done: int, total: int, status_line: str | None = None) -> None:
        with self._lock:
            if frame not in self._finished:
                self._count(frame, done, total, status_line)

    def finish(self, frame: int) -> None:
        with self._lock:
            self._finished.add(frame)
            last = self._latest.get(frame)
            if last is not None and last.done < last.total:
                self._count(frame, last.total, last.total, last.status_line)

    def flush(self) -> None:
        now = self._clock()
        with self._lock:
            if now - self._last_post < self.every:
                return
            if not self._changed and (not self._posted or now - self._last_post < REFRESH_EVERY):
                return
            counts = [self._latest[frame] for frame in sorted(self._changed)]
            self._changed.clear()
            self._posted.update(count.frame for count in counts)
            self._last_post = now
        self._send(counts, [])

    def close(self) -> None:
        """The attempt ended: its counts say nothing any more."""
        with self._lock:
            gone = sorted(self._posted)
            self._posted.clear()
            self._changed.clear()
        if gone:
            self._send([], gone)

    def _count(self, frame: int, done: int, total: int, status_line: str | None) -> None:
        line = status_line[:STATUS_LINE_MAX] if status_line is not None else None
        self._latest[frame] = FrameProgress(
            frame, done, total, self.node, self.attempt, self._wall(), line
        )
        self._changed.add(frame)

    def _send(self, counts: Sequence[FrameProgress], gone: Sequence[int]) -> None:
        try:
            self.board.post(self.job_id, self.attempt, counts, gone)
        except (redis.RedisError, OSError) as error:
            if not self._failing:
                log.warning("cannot post frame progress of job %d: %s", self.job_id, error)
            self._failing = True
        else:
            self._failing = False
