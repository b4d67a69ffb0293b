"""The leader lock on a real Redis: renewed every fifth of its time to live, not every
loop turn; lost to a flush or another holder at the next renewal; taken by a standby."""

from __future__ import annotations

import pytest
import redis

from scheduler.dispatch.leader import LEADER_KEY, LeaderLock
from tests.integration.conftest import Clock

pytestmark = pytest.mark.integration


def test_the_lock_is_renewed_each_fifth_of_its_ttl(broker: redis.Redis, clock: Clock) -> None:
    leader = LeaderLock(broker, ttl=10.0, clock=clock)
    assert leader.try_acquire()
    broker.pexpire(LEADER_KEY, 4_000)  # as if it had aged 6 s
    clock.now += 1.9
    assert leader.keep() and 0 < broker.pttl(LEADER_KEY) <= 4_000  # not renewed yet
    clock.now += 0.2
    assert leader.keep() and broker.pttl(LEADER_KEY) > 9_000  # 2.1 s: renewed


def test_a_lost_lock_is_noticed_at_the_next_renewal(broker: redis.Redis, clock: Clock) -> None:
    leader = LeaderLock(broker, ttl=10.0, clock=clock)
    standby = LeaderLock(broker, ttl=10.0, clock=clock)  # in this process too: its own hold
    assert leader.try_acquire() and not standby.try_acquire()
    broker.delete(LEADER_KEY)  # a flush
    assert standby.try_acquire()
    assert leader.keep()  # between renewals it cannot know: claims are compare-and-set
    clock.now += 2.0
    assert not leader.keep() and not leader.held
    assert standby.keep() and broker.get(LEADER_KEY) == standby.identity.encode()


def test_a_predecessor_in_the_same_process_cannot_release_its_successors_hold(
    broker: redis.Redis,
) -> None:
    """A scheduler stopped late (its thread still ending) holds a token of its own."""
    old = LeaderLock(broker, ttl=10.0)
    assert old.try_acquire()
    broker.delete(LEADER_KEY)  # it expired meanwhile
    new = LeaderLock(broker, ttl=10.0)
    assert new.try_acquire()
    old.release()
    assert not old.held and broker.get(LEADER_KEY) == new.identity.encode()
    assert new.renew()
