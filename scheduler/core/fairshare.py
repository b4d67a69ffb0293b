"""Fair share between studios: whose turn it is to get the next render slot of a pool.

While several studios have work waiting for a pool, each gets slots in proportion
to its weight; a studio alone may take the whole pool. An operator can give a studio
a guaranteed minimum of slots in a pool (served first while it is below it) and a
burst maximum (never exceeded), as OpenCue's subscriptions do. Slots are counted as
chunks dispatched or running, so fairness is enforced at dispatch; running frames
are never killed for it. Pure: standard library only.

How a turn is decided, in order:

1. a studio below its guaranteed minimum;
2. the largest *deficit*: the studio's quota of the slots being shared (its weight's
   fraction of them) less the slots it holds;
3. on equal deficits, the smallest *pass*: a running count of the chunks each studio
   was given, divided by its weight (stride scheduling).

Why the pass: quotas are fractional and slots are not. Four slots and a queue of two
shared 1:3 give quotas of 1.5 and 4.5; by held slots alone the light studio would
sit at 1 (17%) or 2 (33%) for ever. The pass hands the tied slot to whoever has had
less of late, so the light studio alternates between 1 and 2 and gets its 25%.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class StudioShare:
    """A studio's claim on one pool."""

    weight: float = 1.0
    minimum: int = 0  # slots served first while the studio holds fewer
    maximum: int | None = None  # slots the studio never exceeds; None: no cap

    def allows_more(self, held: int) -> bool:
        return self.maximum is None or held < self.maximum


DEFAULT_SHARE = StudioShare()


@dataclass(frozen=True, slots=True)
class PoolTerms:
    """An operator's terms for a studio in one pool (OpenCue calls them a subscription)."""

    minimum: int = 0
    maximum: int | None = None


NO_TERMS = PoolTerms()


def share_of(weight: float, terms: PoolTerms) -> StudioShare:
    return StudioShare(weight, terms.minimum, terms.maximum)


def next_studio(
    waiting: Iterable[int],
    held: Mapping[int, int],
    shares: Mapping[int, StudioShare],
    total: int,
    passes: Mapping[int, float] | None = None,
) -> int | None:
    """The waiting studio whose turn it is, or None if every one is at its maximum.

    ``total`` is the number of slots these studios share: those they hold plus the
    room being handed out. Ties after the pass go to the lower studio id, so the
    answer is deterministic.
    """
    eligible = [s for s in waiting if shares.get(s, DEFAULT_SHARE).allows_more(held.get(s, 0))]
    if not eligible:
        return None
    weights = {s: max(shares.get(s, DEFAULT_SHARE).weight, TOLERANCE) for s in eligible}
    weight_sum = sum(weights.values())
    passes = passes or {}

    def turn(studio: int) -> tuple[bool, float, float, int]:
        holding = held.get(studio, 0)
        deficit = total * weights[studio] / weight_sum - holding
        satisfied = holding >= shares.get(studio, DEFAULT_SHARE).minimum
        return (satisfied, -round(deficit, 9), passes.get(studio, 0.0), studio)

    return min(eligible, key=turn)


def starting_passes(studios: Iterable[int], passes: Mapping[int, float]) -> dict[int, float]:
    """Passes for these studios; a newcomer starts level with the lowest, not at zero,
    so a studio that was away does not claim a burst of catch-up slots."""
    studios = list(studios)
    known = [passes[s] for s in studios if s in passes]
    floor = min(known) if known else 0.0
    return {s: passes.get(s, floor) for s in studios}


class TurnOrder:
    """``next_studio`` asked again and again, at O(log studios) a turn.

    Between turns only the studio just served changes (one more slot held, a higher
    pass), so the others' places hold; the order is rebuilt only when a studio
    leaves (its work is all sent, or it reached its maximum), which changes the
    weights the quotas are shared by. The turns are exactly those of calling
    ``next_studio`` each time (a property test checks it).
    """

    def __init__(
        self,
        studios: Iterable[int],
        held: Mapping[int, int],
        shares: Mapping[int, StudioShare],
        total: int,
        passes: Mapping[int, float],
    ) -> None:
        self.held = {s: held.get(s, 0) for s in studios}
        self.shares = {s: shares.get(s, DEFAULT_SHARE) for s in self.held}
        self.passes = {s: passes.get(s, 0.0) for s in self.held}
        self.total = total
        self.present = {s for s in self.held if self.shares[s].allows_more(self.held[s])}
        self._rebuild()

    def _key(self, studio: int) -> tuple[bool, float, float, int]:
        share = self.shares[studio]
        holding = self.held[studio]
        deficit = self.total * max(share.weight, TOLERANCE) / self._weight_sum - holding
        return (holding >= share.minimum, -round(deficit, 9), self.passes[studio], studio)

    def _rebuild(self) -> None:
        self._weight_sum = sum(max(self.shares[s].weight, TOLERANCE) for s in self.present)
        self._heap = [(self._key(s), s) for s in self.present]
        heapq.heapify(self._heap)

    def next(self) -> int | None:
        return self._heap[0][1] if self._heap else None

    def served(self, studio: int) -> None:
        """The studio got a slot: it holds one more and its pass moves on."""
        heapq.heappop(self._heap)
        self.held[studio] += 1
        self.passes[studio] += 1 / max(self.shares[studio].weight, TOLERANCE)
        if self.shares[studio].allows_more(self.held[studio]):
            heapq.heappush(self._heap, (self._key(studio), studio))
        else:
            self.leave(studio)

    def leave(self, studio: int) -> None:
        """The studio has nothing more to send (or may take no more) this tick."""
        if studio in self.present:
            self.present.discard(studio)
            self._rebuild()
