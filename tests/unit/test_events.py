"""Node events on the wire: typed, versioned, and refused with a reason when unreadable.

A node and a scheduler of different versions must fail loudly, not misread each other:
every event round-trips through JSON, and what cannot be decoded raises ``EventError``
whose message says what was wrong.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from scheduler.wire.messages import (
    BUNDLE_MAX,
    EVENT_VERSION,
    MESSAGE_VERSION,
    ChunkMessage,
    EventError,
    FailedEvent,
    FinishedEvent,
    FrameEvent,
    FrameReport,
    HeartbeatEvent,
    MessageError,
    NodeEvent,
    NodeReport,
    StartedEvent,
    decode_event,
)
from workers.runner import run_message

ATTEMPT: dict[str, Any] = {
    "chunk_id": 7, "attempt": 2, "job_id": 3, "node": "gz-01", "region": "guizhou",
    "at": 1_700_000_000.5,
}  # fmt: skip
METERED = FrameReport(12, "jobs/3/frames/frame_000012.png", 4.5, 4.1, 830.0, "rapl", 2_481_152)
UNMETERED = FrameReport(13, None, 0.2, 0.1)
NODE = NodeReport(
    "gz-01", "cpu", "host-1", 8, 2, 32, 2**36, 1, ["blender"], "guizhou", "rapl", 412.5
)

EVENTS: list[NodeEvent] = [
    StartedEvent(**ATTEMPT),
    FrameEvent(**ATTEMPT, result=METERED),
    FinishedEvent(**ATTEMPT, results=[METERED, UNMETERED], started_at=1_699_999_990.0, exit_code=0),
    FailedEvent(**ATTEMPT, error="renderer exited with code 139", exit_code=139, energy_joules=9.5),
    FailedEvent(**ATTEMPT, error="exceeded the time limit"),
    HeartbeatEvent(node="gz-01", info=NODE, tasks=["chunk-7-attempt-2"], at=1_700_000_001.0),
    HeartbeatEvent(node="gz-01", info=NODE),
    HeartbeatEvent(node="gz-01", info=NODE, tasks=[], at=1_700_000_002.0, life="leaving"),
    HeartbeatEvent(node="gz-01", info=NODE, tasks=[], at=1_700_000_003.0, life="left"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_json(event: NodeEvent) -> None:
    data = json.loads(json.dumps(event.to_dict()))
    assert data["v"] == EVENT_VERSION == 1
    assert data["kind"] == event.kind
    assert decode_event(data) == event


def test_the_envelope_and_the_fields_are_plain_json() -> None:
    assert FrameEvent(**ATTEMPT, result=UNMETERED).to_dict() == {
        "v": 1, "kind": "frame", **ATTEMPT,
        "result": {"frame": 13, "output": None, "render_seconds": 0.2, "cpu_seconds": 0.1,
                   "energy_joules": None, "energy_method": None, "output_bytes": None},
    }  # fmt: skip


def test_an_event_of_a_future_version_is_refused_saying_so() -> None:
    data = {**StartedEvent(**ATTEMPT).to_dict(), "v": 2}
    with pytest.raises(EventError, match="the node speaks v2, this scheduler v1"):
        decode_event(data)


def test_an_event_without_a_version_is_read_as_v1() -> None:
    """v1 kept field for field what nodes sent before events were versioned."""
    data = StartedEvent(**ATTEMPT).to_dict()
    del data["v"]
    assert decode_event(data) == StartedEvent(**ATTEMPT)


def test_fields_this_version_does_not_know_are_ignored() -> None:
    data = {**StartedEvent(**ATTEMPT).to_dict(), "gpu_temperature": 71}
    assert decode_event(data) == StartedEvent(**ATTEMPT)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ([1, 2], "an event is a JSON object"),
        ({"kind": "exploded", **ATTEMPT}, "unknown event kind 'exploded'"),
        ({**ATTEMPT}, "unknown event kind None"),
        ({"kind": ["started"], **ATTEMPT}, "unknown event kind"),
        ({"v": "1", "kind": "started", **ATTEMPT}, "version 'v' must be an integer"),
        ({"v": 0, "kind": "started", **ATTEMPT}, "the node speaks v0, this scheduler v1"),
        ({"kind": "started", "attempt": 1, "job_id": 1, "node": "a"},
         "started event: field 'chunk_id' is missing"),
        ({"kind": "started", **ATTEMPT, "chunk_id": "7"},
         "started event: field 'chunk_id' must be an integer, not '7'"),
        ({"kind": "started", **ATTEMPT, "attempt": True}, "field 'attempt' must be an integer"),
        ({"kind": "started", **ATTEMPT, "attempt": 0}, "no such attempt: chunk 7, attempt 0"),
        ({"kind": "started", **ATTEMPT, "at": "noon"}, "field 'at' must be a number"),
        ({"kind": "failed", **ATTEMPT}, "failed event: field 'error' is missing"),
        ({"kind": "finished", **ATTEMPT}, "finished event: field 'results' is missing"),
        ({"kind": "finished", **ATTEMPT, "results": {}}, "field 'results' must be a list"),
        ({"kind": "frame", **ATTEMPT}, "frame event: field 'result' is missing"),
        ({"kind": "frame", **ATTEMPT, "result": {"frame": 1}},
         "frame event: field 'output' is missing"),
        ({"kind": "heartbeat", "node": "a"}, "heartbeat event: field 'info' is missing"),
        ({"kind": "heartbeat", "node": "a", "info": {**NODE.to_dict(), "slots": "8"}},
         "heartbeat event: info: field 'slots' must be an integer, not '8'"),
        ({"kind": "heartbeat", "node": "a", "info": NODE.to_dict(), "tasks": "chunk-1"},
         "field 'tasks' must be a list of strings"),
        ({"kind": "heartbeat", "node": "a", "info": NODE.to_dict(), "life": "gone"},
         "heartbeat event: field 'life' must be one of online, leaving, left, not 'gone'"),
        ({"kind": "heartbeat", "node": "a", "info": NODE.to_dict(), "life": None},
         "heartbeat event: field 'life' must be a string, not None"),
        # What the nodes table cannot store fails the one report, not its batch's statement.
        ({"kind": "heartbeat", "node": "a", "info": {**NODE.to_dict(), "name": "n" * 201}},
         "info: field 'name' must be a string of 1 to 200 characters"),
        ({"kind": "heartbeat", "node": "a", "info": {**NODE.to_dict(), "pool": ""}},
         "info: field 'pool' must be a string of 1 to 64 characters"),
        ({"kind": "heartbeat", "node": "a", "info": {**NODE.to_dict(), "region": "r" * 65}},
         "info: field 'region' must be a string of 0 to 64 characters"),
        ({"kind": "heartbeat", "node": "a", "info": {**NODE.to_dict(), "energy_method": 3}},
         "info: field 'energy_method' must be a string of 0 to 32 characters"),
        ({"kind": "heartbeat", "node": "a", "info": {**NODE.to_dict(), "name": "a\x00b"}},
         "info: field 'name' must be a string of 1 to 200 characters, without NUL"),
        ({"kind": "heartbeat", "node": "a", "info": {**NODE.to_dict(), "region": "\ud800"}},
         "info: field 'region' must be a string of 0 to 64 characters, without NUL"),
    ],
)  # fmt: skip
def test_an_unreadable_event_says_what_is_wrong(data: Any, complaint: str) -> None:
    with pytest.raises(EventError) as caught:
        decode_event(data)
    assert complaint in str(caught.value)


def test_a_malformed_report_in_finished_is_left_out_not_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = FinishedEvent(**ATTEMPT, results=[METERED]).to_dict()
    data["results"].extend([None, {"frame": 13, "output": None, "render_seconds": 1.0}])
    with caplog.at_level(logging.ERROR, logger="scheduler.wire.messages"):
        event = decode_event(data)
    assert isinstance(event, FinishedEvent) and event.results == [METERED]
    complaints = [r.getMessage() for r in caplog.records]
    assert len(complaints) == 2
    assert "results[2]: field 'cpu_seconds' is missing" in complaints[1]


@pytest.mark.parametrize("joules", [-5.0, "lots", [1], float("inf"), float("nan"), True])
def test_an_impossible_energy_figure_is_dropped_not_the_frame(joules: Any) -> None:
    report = {**UNMETERED.to_dict(), "energy_joules": joules}
    event = decode_event({"kind": "frame", **ATTEMPT, "result": report})
    assert event == FrameEvent(**ATTEMPT, result=UNMETERED)


@pytest.mark.parametrize("size", [-1, 1.5, "2 MB", True])
def test_an_impossible_output_size_is_dropped_not_the_frame(size: Any) -> None:
    report = {**METERED.to_dict(), "output_bytes": size}
    event = decode_event({"kind": "frame", **ATTEMPT, "result": report})
    assert isinstance(event, FrameEvent) and event.result.output_bytes is None
    assert event.result.energy_joules == METERED.energy_joules


def test_an_older_nodes_report_has_no_output_size() -> None:
    report = {k: v for k, v in METERED.to_dict().items() if k != "output_bytes"}
    event = decode_event({"kind": "frame", **ATTEMPT, "result": report})
    assert isinstance(event, FrameEvent) and event.result.output_bytes is None


@pytest.mark.parametrize(
    ("said", "taken"),
    [(None, 1), (16, 16), (4, 4), (10**12, BUNDLE_MAX), (0, 1), (-3, 1)],
)
def test_a_nodes_bundle_is_what_it_said_within_what_this_scheduler_sends(
    said: int | None, taken: int
) -> None:
    """A node of a renderfarm before bundles says nothing: one chunk a message. A figure
    past the column's range is bounded here, not the failure of its batch's statement."""
    info = {k: v for k, v in NODE.to_dict().items() if k != "bundle"}
    if said is not None:
        info["bundle"] = said
    event = decode_event({"kind": "heartbeat", "node": "gz-01", "info": info})
    assert isinstance(event, HeartbeatEvent) and event.info.bundle == taken


def test_a_node_that_says_nothing_of_its_life_is_online() -> None:
    """A node of a renderfarm before nodes said they were leaving."""
    event = decode_event({"kind": "heartbeat", "node": "gz-01", "info": NODE.to_dict()})
    assert isinstance(event, HeartbeatEvent) and event.life == "online"


# Scheduler -> node: the chunk message -------------------------------------------------

MESSAGE = ChunkMessage(
    chunk_id=7, attempt=2, job_id=3, pool="cpu", frames=[1, 2], renderer="noop",
    settings={"seconds": 0.0}, output_pattern="jobs/3/frames/frame_{frame}.png",
    log_path="jobs/3/logs/chunk-7-attempt-2.log", timeout=60.0, node="gz-01",
)  # fmt: skip


def test_a_chunk_message_round_trips_with_its_version() -> None:
    data = json.loads(json.dumps(MESSAGE.to_dict()))
    assert data["v"] == MESSAGE_VERSION
    assert ChunkMessage.from_dict(data) == MESSAGE
    assert ChunkMessage.from_dict({**data, "priority_hint": 3}) == MESSAGE  # a later field


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"v": MESSAGE_VERSION + 1}, "the scheduler speaks v2, this node v1"),
        ({"frames": ["1"]}, "frames must be a list of integers"),
    ],
)
def test_an_unreadable_chunk_message_says_what_is_wrong(
    change: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(MessageError, match=complaint):
        ChunkMessage.from_dict({**MESSAGE.to_dict(), **change})
    missing = MESSAGE.to_dict()
    del missing["renderer"]
    with pytest.raises(MessageError, match="renderer"):
        ChunkMessage.from_dict(missing)


def test_a_node_fails_the_attempt_of_a_message_it_cannot_read(tmp_path: Path) -> None:
    """Instead of Celery dropping the task (and the scheduler sending it again and again),
    the attempt fails with the reason, for the studio to see."""
    sent: list[dict[str, Any]] = []
    future = {**MESSAGE.to_dict(), "v": MESSAGE_VERSION + 1}
    assert run_message(future, tmp_path, "gz-01", sent.append, region="guizhou") is False
    (event,) = [decode_event(data) for data in sent]
    assert isinstance(event, FailedEvent)
    assert (event.chunk_id, event.attempt, event.job_id) == (7, 2, 3)
    assert "the scheduler speaks v2, this node v1" in event.error
    assert run_message({"v": 1}, tmp_path, "gz-01", sent.append) is False  # names no attempt
    assert len(sent) == 1
