"""The node's energy ledger with real processes: frames add up to the meter, CPU decides."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scheduler.wire.messages import ChunkMessage, FrameReport
from tests.conftest import wait_for
from workers.energy import RESOLUTION_SECONDS, EnergyLedger, LedgerServer
from workers.meters import ModelMeter
from workers.metrics import WORKER_REGISTRY
from workers.runner import run_chunk

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


class SteadyMeter:
    """A node drawing a steady 200 W: what a real meter would say, without the noise."""

    method = "steady"

    def __init__(self) -> None:
        self.started = time.monotonic()

    def read(self) -> float:
        return 200.0 * (time.monotonic() - self.started)


def burner(cpu_seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BURN.format(seconds=cpu_seconds)])


def test_the_busier_render_carries_more_and_nothing_is_lost() -> None:
    meter = SteadyMeter()
    ledger = EnergyLedger(meter, idle_watts=40.0, slots=4)
    heavy, light = burner(1.2), burner(0.1)
    ledger.begin("heavy", heavy.pid)
    ledger.begin("light", light.pid)
    for _ in range(6):  # a few samples while both run
        time.sleep(0.1)
        ledger.sample()
    light.wait()
    light_joules = ledger.end("light", cpu_total=None)
    heavy.wait()
    heavy_joules = ledger.end("heavy", cpu_total=None)
    assert light_joules is not None and heavy_joules is not None
    assert heavy_joules > 2 * light_joules
    # Conservation: the two renders and the node's own idle add up to the meter.
    assert heavy_joules + light_joules + ledger.unattributed_joules == pytest.approx(
        ledger.total_joules, rel=1e-9
    )
    assert ledger.end("light") is None  # ended once; a second end changes nothing


def chunk(frames: list[int]) -> ChunkMessage:
    return ChunkMessage(
        chunk_id=7, attempt=1, job_id=3, pool="cpu", frames=frames, renderer="builtin",
        settings={"width": 64, "height": 48, "samples": 2}, output_pattern="f_{frame}.png",
        log_path="a.log", timeout=60,
    )  # fmt: skip


def test_rendered_frames_carry_their_energy_over_the_ledger_socket(tmp_path: Path) -> None:
    ledger = EnergyLedger(ModelMeter(20.0, 80.0), idle_watts=20.0, slots=2)
    server = LedgerServer(ledger, every=0.2)
    server.start()
    events: list[dict[str, Any]] = []
    try:
        assert run_chunk(chunk([1, 2, 3]), tmp_path, "node-1", events.append, server.client(), "gz")
    finally:
        server.stop()
    finished = events[-1]
    assert finished["kind"] == "finished" and finished["region"] == "gz"
    reports = [FrameReport.from_dict(r) for r in finished["results"]]
    assert [r.energy_method for r in reports] == ["model"] * 3
    assert all(r.energy_joules and r.energy_joules > 0 for r in reports)
    told = [e["result"]["energy_joules"] for e in events if e["kind"] == "frame"]
    assert told[:2] == [r.energy_joules for r in reports[:2]]
    assert 0 < told[2] <= (reports[2].energy_joules or 0)  # + the renderer's exit
    carried = sum(r.energy_joules or 0 for r in reports)
    assert carried + ledger.unattributed_joules == pytest.approx(ledger.total_joules, rel=1e-9)
    # One slot of two was busy: at least half the idle power went unattributed.
    assert ledger.unattributed_joules > 0


def test_a_failed_render_reports_the_energy_it_used(tmp_path: Path) -> None:
    ledger = EnergyLedger(SteadyMeter(), idle_watts=0.0, slots=1)
    server = LedgerServer(ledger)
    server.start()
    events: list[dict[str, Any]] = []
    too_slow = {"width": 1920, "height": 1080, "samples": 4}  # seconds; the limit is 0.5 s
    failing = dataclasses.replace(chunk([1]), settings=too_slow, timeout=0.5)
    try:
        assert not run_chunk(failing, tmp_path, "node-1", events.append, server.client())
    finally:
        server.stop()
    failed = events[-1]
    assert failed["kind"] == "failed" and "time limit" in failed["error"]
    assert failed["energy_joules"] + ledger.unattributed_joules == pytest.approx(
        ledger.total_joules, rel=1e-9
    )
    assert failed["energy_joules"] > 0


def test_without_the_ledger_frames_render_unmetered(tmp_path: Path) -> None:
    ledger = EnergyLedger(SteadyMeter(), idle_watts=0.0, slots=1)
    server = LedgerServer(ledger)
    client = server.client()
    server.stop()  # the ledger is gone: the render must not be
    events: list[dict[str, Any]] = []
    assert run_chunk(chunk([1]), tmp_path, "node-1", events.append, client)
    report = FrameReport.from_dict(events[-1]["results"][0])
    assert report.energy_joules is None and report.output == "f_000001.png"
    wait_for(lambda: (tmp_path / "f_000001.png").is_file(), 5, "the frame on disk")


class CountingMeter(SteadyMeter):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(self) -> float:
        self.reads += 1
        return super().read()


def test_renders_beginning_together_share_one_reading() -> None:
    """Within the ledger's resolution a beginning reads nothing; an end always reads;
    the frames still add up to the meter with what the node kept."""
    meter = CountingMeter()
    now = [100.0]
    ledger = EnergyLedger(meter, idle_watts=40.0, slots=4, clock=lambda: now[0])
    heavy = burner(0.3)
    reads = meter.reads
    now[0] += 1.0
    ledger.begin("a", heavy.pid)
    ledger.begin("b", heavy.pid)  # the same instant: no second reading
    assert meter.reads == reads + 1
    now[0] += RESOLUTION_SECONDS / 2
    brief = ledger.end("b")
    assert brief is not None and meter.reads == reads + 2
    now[0] += 1.0
    heavy.wait()
    spent = ledger.end("a")
    assert meter.reads == reads + 3 and spent is not None and spent > 0
    assert spent + brief + ledger.unattributed_joules == pytest.approx(
        ledger.total_joules, rel=1e-9
    )


def counted_frames() -> float:
    labels = {"pool": "", "region": "", "method": "steady"}
    counted = WORKER_REGISTRY.get_sample_value("renderfarm_worker_frames_rendered_total", labels)
    return counted or 0.0


def test_a_render_shorter_than_the_resolution_costs_no_round_trip(tmp_path: Path) -> None:
    """A no-op chunk ends before the ledger hears of it: its frame carries 0 J by the
    ledger's method, the ledger counts the frame, and nothing stays running there."""
    ledger = EnergyLedger(SteadyMeter(), idle_watts=0.0, slots=1)
    server = LedgerServer(ledger)
    server.start()
    events: list[dict[str, Any]] = []
    noop = dataclasses.replace(chunk([1, 2]), renderer="noop", settings={})
    frames_before = counted_frames()
    try:
        assert run_chunk(noop, tmp_path, "node-1", events.append, server.client())
        wait_for(lambda: counted_frames() == frames_before + 2, 5, "the frames counted")
    finally:
        server.stop()
    reports = [FrameReport.from_dict(r) for r in events[-1]["results"]]
    assert [(r.energy_joules, r.energy_method) for r in reports] == [(0.0, "steady")] * 2
    assert ledger.running == 0
    slow = dataclasses.replace(noop, chunk_id=8, settings={"sleep": 0.05})
    server = LedgerServer(ledger)
    server.start()
    try:
        assert run_chunk(slow, tmp_path, "node-1", events.append, server.client())
    finally:
        server.stop()
    reports = [FrameReport.from_dict(r) for r in events[-1]["results"]]
    assert all(r.energy_joules and r.energy_joules > 0 for r in reports)  # it entered
