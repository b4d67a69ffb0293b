"""The planner on a synthetic feature film: 300 shots of 500 frames (150,000 frames),
submitted ten an hour with a deadline 72 hours on, on two Guizhou halls of 200 slots
(one with a time-of-use tariff and an hourly hydro-and-coal carbon profile, one flat at
China's grid average), under fastest, cheapest and greenest. Prints each policy's
figures against fastest's, and the simulation's speed (simulated frames per second of
wall time).

``--east``: the same film from a studio in Hangzhou, each shot a 10 GB scene and 30 MB
frames, with a third hall of 100 slots near the studio (Zhejiang's time-of-use periods,
the national average carbon) and the Guizhou halls over a link of 1 Gbit/s, 15 ms and
0.5 CNY/GB (the installed defaults): what moving the data changes.

    python bench/plan.py            # a table
    python bench/plan.py --east
    python bench/plan.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.core.energy import RegionFigures
from scheduler.core.planner import Shot, SimRegion, compare
from scheduler.core.signals import HOUR, DailyCurve, RegionSignals
from scheduler.core.siting import Link

START = 1_796_104_800.0  # 2026-12-01T06:00:00Z, 14:00 in Guizhou


def film(shots: int, frames: int, east: bool = False) -> list[Shot]:
    return [
        Shot(
            f"sh{i:04d}",
            frames,
            120.0 + (i % 7) * 30,
            2.0e5,
            submit_at=(i // 10) * HOUR,
            deadline=(i // 10) * HOUR + 72 * HOUR,
            scene_bytes=10e9 if east else 0.0,
            output_bytes=30e6 if east else 0.0,
        )
        for i in range(shots)
    ]


def east_farm() -> list[SimRegion]:
    link = Link(bandwidth_mbps=1000.0, latency_ms=15.0, price_per_gb=0.5)
    zhejiang = RegionSignals(
        "zhejiang",
        1.25,
        DailyCurve(((0, 0.26), (7, 0.65), (11, 0.26), (14, 0.65), (16, 1.2025), (23, 0.65))),
        DailyCurve.flat(536.6),
    )
    west = [SimRegion(r.signals, r.slots, link) for r in farm()]
    return [*west, SimRegion(zhejiang, 100)]


def farm() -> list[SimRegion]:
    # Synthetic signals: a valley tariff at night; carbon lowest at night, when hydro
    # carries more of the load, highest in the evening peak (a shape, not measured data).
    mixed = RegionSignals(
        "guizhou-mixed",
        1.2,
        DailyCurve(((0, 0.25), (8, 0.9), (22, 0.25))),
        DailyCurve.hourly([380 + 12 * h if h < 20 else 620 - 40 * (h - 20) for h in range(24)]),
    )
    grid = RegionSignals.flat("guizhou-grid", RegionFigures(1.2, 0.35, 536.6))
    return [SimRegion(mixed, 200), SimRegion(grid, 200)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=300)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--east", action="store_true", help="a studio far from Guizhou")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    shots = film(args.shots, args.frames, args.east)
    started = time.perf_counter()
    halls = east_farm() if args.east else farm()
    reports = compare(shots, halls, ["fastest", "cheapest", "greenest"], START)
    seconds = time.perf_counter() - started
    fastest = reports[0]
    figures = {
        "frames": fastest.frames,
        "simulated_frames_per_s": len(reports) * fastest.frames / seconds,
        "policies": {
            r.policy: {
                **r.as_dict(),
                "cost_vs_fastest": r.total_cost / fastest.total_cost - 1,
                "co2_vs_fastest": r.co2_grams / fastest.co2_grams - 1,
            }
            for r in reports
        },
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{fastest.frames} frames, {figures['simulated_frames_per_s']:,.0f} simulated frames/s")
    for name, r in figures["policies"].items():  # type: ignore[attr-defined]
        print(
            f"  {name:9s} makespan {r['makespan_seconds'] / HOUR:6.1f} h, cost "
            f"{r['cost_vs_fastest']:+.1%}, CO2 {r['co2_vs_fastest']:+.1%}, "
            f"deadlines missed {r['deadlines_missed']}, moved {r['moved_bytes'] / 1e12:.1f} "
            f"TB for {r['transfer_cost']:,.0f} CNY, frames {r['frames_by_region']}"
        )


if __name__ == "__main__":
    main()
