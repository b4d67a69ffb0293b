"""A farm on many hosts, on one machine: Linux network namespaces (tests/hosts.py).

- "east": the studio's client (it submits over HTTP and downloads the frames);
- "core": the API, the scheduler, Redis and a PostgreSQL cluster of the test's;
- "west1", "west2": a render node each, sharing no folder with the core: they fetch
  scenes from the API and send frames back to it, over HTTP with the node token.

East and west hosts are 30 ms (round trip) from the core: each reaches the core's
ports through a relay on its own host that delays every byte 15 ms each way
(tests/relay.py; this machine's kernel has no ``tc netem``). The faults are the
network's: a west host's link cut (its node lives on, unreachable), and Redis restarted
empty in the core. Every frame ends rendered exactly once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.db import AttemptRow, ChunkRow, FrameResultRow, NodeRow
from tests.conftest import wait_for
from tests.hosts import NODE_TIMEOUT, RENDERFARM, Farm, can_make_hosts, host_farm, node_states

pytestmark = pytest.mark.end_to_end


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    why = can_make_hosts()
    if why is not None:
        if os.environ.get("RENDERFARM_REQUIRE_NETNS"):
            pytest.fail(f"cannot make test hosts: {why}")
        pytest.skip(why)
    with host_farm(tmp_path / "farm") as farm:
        yield farm


def rendered_by(engine: Engine, job_id: int) -> dict[int, str]:
    with Session(engine) as session:
        rows = session.exec(
            select(FrameResultRow.frame, FrameResultRow.node).where(FrameResultRow.job_id == job_id)
        ).all()
    return dict(rows)


def idle(engine: Engine, node: str) -> bool:
    """Whether the node's latest heartbeat said it renders nothing: its renders' events
    were published before their tasks returned, so before that heartbeat, and ingested
    before it (one Redis list, in order)."""
    with Session(engine) as session:
        row = session.get(NodeRow, node)
    return row is not None and row.state == "online" and row.running == 0


def job_state(engine: Engine, job_id: int) -> str:
    with Session(engine) as session:
        states = set(session.exec(select(ChunkRow.state).where(ChunkRow.job_id == job_id)))
    return "done" if states == {"done"} else ",".join(sorted(states))


def assert_each_frame_once(engine: Engine, job_id: int, frames: int) -> None:
    with Session(engine) as session:
        rows = session.exec(
            select(FrameResultRow.frame).where(FrameResultRow.job_id == job_id)
        ).all()
        done_attempts = session.exec(
            select(func.count())
            .select_from(AttemptRow)
            .where(col(AttemptRow.job_id) == job_id, col(AttemptRow.state) == "done")
        ).one()
    assert sorted(rows) == list(range(1, frames + 1))  # none lost, none twice
    assert done_attempts == frames  # one chunk a frame: each counted by one attempt


def test_a_west_host_cut_off_mid_job_loses_no_frame_and_counts_none_twice(
    farm: Farm, tmp_path: Path
) -> None:
    job_id = farm.submit("1-24")
    wait_for(
        lambda: set(rendered_by(farm.engine, job_id).values()) == {"node-west1", "node-west2"},
        120, "both west hosts to render",
    )  # fmt: skip
    farm.network.cut("west1")
    wait_for(lambda: node_states(farm.engine)["node-west1"] == "lost", NODE_TIMEOUT + 30, "lost")
    wait_for(lambda: job_state(farm.engine, job_id) == "done", 240, "the job to finish")
    farm.network.mend("west1")  # the old node comes back with its late events
    wait_for(lambda: node_states(farm.engine)["node-west1"] == "online", 60, "west1 back online")
    wait_for(lambda: idle(farm.engine, "node-west1"), 60, "west1's late events")
    assert_each_frame_once(farm.engine, job_id, 24)
    assert job_state(farm.engine, job_id) == "done"
    after = [f for f, node in rendered_by(farm.engine, job_id).items() if node == "node-west2"]
    assert after, "west2 rendered what west1 was cut off with"

    # The studio in the east downloads every frame over HTTP, 30 ms away.
    to = tmp_path / "downloaded"
    farm.east(RENDERFARM, "download", str(job_id), "--to", str(to), "--api",
              "http://127.0.0.1:8000", "--key", farm.key)  # fmt: skip
    assert len(list(to.glob("*.png"))) == 24


def test_redis_restarted_empty_in_the_core_mid_job_loses_no_frame(farm: Farm) -> None:
    job_id = farm.submit("1-16")
    wait_for(lambda: len(rendered_by(farm.engine, job_id)) >= 3, 120, "a few frames")
    redis = farm.processes["redis"]
    os.killpg(redis.pid, signal.SIGKILL)
    redis.wait(10)
    farm.start_redis()  # empty: queues, events, the leader lock all gone
    wait_for(lambda: job_state(farm.engine, job_id) == "done", 240, "the job to finish")
    both = ("node-west1", "node-west2")
    wait_for(lambda: all(idle(farm.engine, n) for n in both), 60, "the nodes to end renders")
    assert_each_frame_once(farm.engine, job_id, 16)
