"""A pool's pace: chunks rendered per second, read from what its nodes finished.

``queue_buffer`` (scheduler/core/policy.py) deepens a pool's queues by its pace times a
few dispatch ticks; this is how the pace and the tick are read. Pure: the caller gives
the times (``now``) and what each ingest batch rendered.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping, Sequence


class CompletionRate:
    """Chunks rendered per pool per second over a sliding window, and the mean dispatch
    tick.

    A rate is the count over the time the counts cover: the window, or less when the
    pool began finishing chunks more recently (a scheduler just started, a burst after
    a quiet spell). Over the whole window, the first second of a burst of short chunks
    read as a fifth of its rate, and its queues stayed shallow for five seconds.

    ``turn`` is the least time between dispatches under load (``gather_seconds``): no
    count is read over less, and no tick is taken as shorter, though an idle
    scheduler's turns come milliseconds apart. With half a second as the least span,
    and the mean of idle turns of a few milliseconds as the tick, a burst's first
    turns were read at a fifth of their rate and queued a tenth of what they needed:
    the first second of a job of short chunks left its nodes idle most of the time
    (BENCHMARKS.md, issue 14).

    A chunk that held its slot longer than the time counted so far is read at its own
    pace instead, one over the seconds it held (``record``): four chunks of ten
    minutes that end in the same turn are not a rate of forty a second (which would
    queue 160 more on the pool's nodes), but four slots' worth of one per ten minutes;
    one of them ending among thousands of short chunks hardly changes their rate; and
    a node's clock that stepped back adds next to nothing."""

    LEAST_TURN = 0.02  # seconds: with gather_seconds 0, still no rate over no time

    def __init__(self, window: float = 5.0, turn: float = 0.1) -> None:
        self.window = window
        self.turn = max(turn, self.LEAST_TURN)
        # (when, chunks counted over the span, the long chunks' own paces), by pool
        self._finished: dict[str, deque[tuple[float, int, float]]] = defaultdict(deque)
        self._since: dict[str, float] = {}  # since when each pool's counts run
        self._last_tick: float | None = None
        self._mean_tick = 0.0

    @property
    def tick(self) -> float:
        """The mean time between dispatch ticks, at least one turn."""
        return max(self._mean_tick, self.turn)

    def record(self, now: float, held: Mapping[str, Sequence[float]]) -> None:
        """Chunks rendered, by pool: the seconds each held its slot."""
        for pool, seconds in held.items():
            if not seconds:
                continue
            recent = self._recent(pool, now)
            if not recent:  # counted since the last tick, or since the window began
                self._since[pool] = now - min(self.tick, self.window)
            span = self._span(pool, now)
            counted = sum(1 for s in seconds if s <= span)
            own = sum(1 / s for s in seconds if s > span)
            recent.append((now, counted, own))

    def note_tick(self, now: float) -> None:
        if self._last_tick is not None:
            interval = min(now - self._last_tick, self.window)
            mean = self._mean_tick
            self._mean_tick = interval if not mean else 0.8 * mean + 0.2 * interval
        self._last_tick = now

    def per_second(self, pool: str, now: float) -> float:
        recent = self._recent(pool, now)
        if not recent:
            return 0.0
        counted = sum(n for _, n, _ in recent)
        return counted / self._span(pool, now) + sum(own for _, _, own in recent)

    def _span(self, pool: str, now: float) -> float:
        return min(self.window, max(now - self._since[pool], self.turn))

    def _recent(self, pool: str, now: float) -> deque[tuple[float, int, float]]:
        recent = self._finished[pool]
        while recent and recent[0][0] < now - self.window:
            recent.popleft()
        if recent and self._since[pool] < now - self.window:
            self._since[pool] = now - self.window
        return recent
