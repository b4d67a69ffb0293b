"""Running totals of frames: what a frame adds, and a restated frame's change."""

from __future__ import annotations

from scheduler.core.buckets import ENERGY_JOULES_BUCKETS, RENDER_SECONDS_BUCKETS
from scheduler.core.rollups import UNMETERED, bucket, frame_measures, totals_change

FRAME = {"pool": "cpu", "region": "guizhou", "render_seconds": 0.3, "cpu_seconds": 0.2}


def test_a_frame_counts_in_the_buckets_at_or_above_it() -> None:
    measures = frame_measures({**FRAME, "it_joules": 7.0, "cost": 0.01})
    assert {b for b in RENDER_SECONDS_BUCKETS if bucket("render_seconds", b) in measures} == {
        b for b in RENDER_SECONDS_BUCKETS if b >= 0.3
    }
    assert {b for b in ENERGY_JOULES_BUCKETS if bucket("it_joules", b) in measures} == {
        b for b in ENERGY_JOULES_BUCKETS if b >= 7
    }
    assert (measures["frames"], measures["metered"], measures["cost"]) == (1, 1, 0.01)


def test_an_unmetered_frame_has_no_energy_buckets() -> None:
    measures = frame_measures(FRAME)
    assert "metered" not in measures
    assert not [m for m in measures if m.startswith("it_joules_le")]
    assert totals_change([FRAME]).keys() >= {("cpu", "guizhou", UNMETERED, "frames")}


def test_a_restated_frame_moves_between_methods_and_cancels_out_where_unchanged() -> None:
    before = {**FRAME, "energy_method": None, "it_joules": None}
    after = {**FRAME, "energy_method": "rapl", "it_joules": 12.0}
    change = totals_change([after], [before])
    assert change[("cpu", "guizhou", UNMETERED, "frames")] == -1
    assert change[("cpu", "guizhou", "rapl", "frames")] == 1
    assert change[("cpu", "guizhou", "rapl", "it_joules")] == 12.0
    assert totals_change([after], [after]) == {}
