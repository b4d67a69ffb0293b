"""Metering overhead: the same built-in frames rendered with the energy ledger on and off.

A render slot does the same work either way (start the renderer, read its output, time
its frames); with metering on it also talks to the node's energy ledger at the start,
at every frame and at the end, and the ledger samples the node's meter (the power
model, as on a virtual machine) and every running render's CPU once a second. Here the
ledger runs in this process, as it runs in the worker's main process, so the CPU time
of this process (all threads, never the renderers) holds all of metering's cost.

Rounds alternate off and on, so a machine that slows down mid-run hurts both. Printed:
this process's CPU per frame off and on, the difference, and that difference as a
share of a one-second frame and of the frames rendered here. On frames of a second
the difference is within the noise of the "off" figure, so the ledger's own cost is
measured directly too: the CPU of one frame's worth of ledger calls (begin, frame,
end over the socket, each with a meter sample) plus one sampling tick, over
thousands of repetitions against a live process.

    python bench/metering.py                 # 4 rounds of 6 frames each way
    python bench/metering.py --rounds 6 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from scheduler.wire.messages import ChunkMessage, FrameReport
from workers.energy import EnergyLedger, LedgerClient, LedgerServer
from workers.meters import IDLE_WATTS_PER_CPU, MAX_WATTS_PER_CPU, ModelMeter
from workers.runner import run_chunk


def render(storage: Path, frames: list[int], size: tuple[int, int], meter: LedgerClient | None):
    """(CPU seconds of this process, render seconds of the frames) for one chunk."""
    message = ChunkMessage(
        chunk_id=frames[0], attempt=1, job_id=1, pool="cpu", frames=frames, renderer="builtin",
        settings={"width": size[0], "height": size[1], "samples": 2},
        output_pattern="f_{frame}.png", log_path=f"chunk-{frames[0]}.log", timeout=600,
    )  # fmt: skip
    events: list[dict] = []
    before = time.process_time()
    ok = run_chunk(message, storage, "bench", events.append, meter)
    cpu = time.process_time() - before
    assert ok, events[-1]
    reports = [FrameReport.from_dict(r) for r in events[-1]["results"]]
    if meter:
        assert all(r.energy_joules is not None for r in reports)
    return cpu, sum(r.render_seconds for r in reports)


def ledger_cost_per_frame(client: LedgerClient, ledger: EnergyLedger, repeat: int = 2000) -> float:
    """CPU seconds of begin + frame + end and one sampling tick, against a live process."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        before = time.process_time()
        for n in range(repeat):
            client.begin(("bench", n), sleeper.pid)
            client.frame(("bench", n), 1.0)
            ledger.sample()  # the tick a one-second frame sees once
            client.end(("bench", n), None, [])
        return (time.process_time() - before) / repeat
    finally:
        sleeper.kill()
        sleeper.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6, help="frames per round and mode")
    parser.add_argument("--size", default="480x270", help="frame size; 480x270 ~ 1 s here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = tuple(int(n) for n in args.size.split("x"))
    cpus = psutil.cpu_count() or 1
    ledger = EnergyLedger(
        ModelMeter(IDLE_WATTS_PER_CPU * cpus, MAX_WATTS_PER_CPU * cpus),
        IDLE_WATTS_PER_CPU * cpus,
        slots=1,
    )
    server = LedgerServer(ledger, every=1.0)
    server.start()
    client = server.client()  # a render slot keeps one line to the ledger
    figures: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    frame_no = 1
    with tempfile.TemporaryDirectory() as folder:
        storage = Path(folder)
        render(storage, [frame_no], size, None)  # warm the disk cache and imports
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                frames = list(range(frame_no, frame_no + args.frames))
                frame_no += args.frames
                # One chunk per frame: a start, a frame and an end, the most ledger calls
                # per frame a render can make.
                for frame in frames:
                    figures[mode].append(
                        render(storage, [frame], size, client if mode == "on" else None)
                    )
    direct = ledger_cost_per_frame(client, ledger)
    server.stop()
    per_frame = {mode: statistics.mean(cpu for cpu, _ in rows) for mode, rows in figures.items()}
    seconds = statistics.mean(render for rows in figures.values() for _, render in rows)
    extra = per_frame["on"] - per_frame["off"]
    result = {
        "frames_per_mode": len(figures["on"]),
        "frame_render_seconds": round(seconds, 3),
        "cpu_per_frame_off_ms": round(per_frame["off"] * 1000, 3),
        "cpu_per_frame_on_ms": round(per_frame["on"] * 1000, 3),
        "extra_cpu_per_frame_ms": round(extra * 1000, 3),
        "extra_share_of_1s_frame": round(extra / 1.0, 5),
        "extra_share_of_these_frames": round(extra / seconds, 5),
        "ledger_samples_per_second": 1.0,
        "direct_ledger_cpu_per_frame_ms": round(direct * 1000, 3),
        "direct_share_of_1s_frame": round(direct / 1.0, 5),
    }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
