"""Blender through the farm against bare Blender: the same scene, frames and settings.

Bare: the node's own Blender command for one chunk of all N frames (the driver under
the ``bpy`` module, or ``blender -b ... --python blender_driver.py``: what a studio
would run by hand), timed from start to exit. Farm: the embedded farm with one
``renderfarm worker --slots 1``; a job of the same N frames in one chunk (chunk size
N) submitted over the REST API, timed from the POST to the job reading ``done`` (so
dispatch, the Celery hop, events and the database writes are all inside). The scene
is the one tests/integration/test_blender.py builds, rendered bigger with Cycles.

    python bench/blender.py                                  # 24 frames, 3 rounds, a table
    python bench/blender.py --frames 24 --size 320x180 --samples 16 --rounds 3 --json
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
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dispatch import free_port, wait_for_job
from scheduler.launch.demo import studio_key
from scheduler.launch.embedded import EmbeddedRedis, LocalFarm, wait_until
from scheduler.settings import Settings
from scheduler.wire.messages import ChunkMessage
from tests.integration.test_blender import build_scene
from workers.renderers.blender import BlenderCommand, find_blender

SCENE = "shots/bench/sh010.blend"


def bench_bare(storage: Path, frames: int, renderer: dict[str, Any]) -> float:
    """Frames per second of the node's Blender command alone."""
    message = ChunkMessage(
        chunk_id=0, attempt=1, job_id=0, pool="cpu", frames=list(range(1, frames + 1)),
        renderer="blender", settings={k: v for k, v in renderer.items() if k != "kind"},
        output_pattern="bare/frame_{frame}.png", log_path="bare.log", timeout=3600,
    )  # fmt: skip
    argv = BlenderCommand().argv(message, storage)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=storage, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or len(list((storage / "bare").glob("*.png"))) != frames:
        raise RuntimeError(f"bare Blender failed: {done.stdout[-2000:]}")
    return frames / elapsed


def bench_farm(settings: Settings, frames: int, renderer: dict[str, Any]) -> float:
    """Frames per second of a one-slot farm rendering the frames as one chunk."""
    with LocalFarm(settings, workers=1, slots=1, api_port=free_port()) as farm:
        client = httpx.Client(
            base_url=farm.api_url,
            headers={"Authorization": f"Bearer {studio_key(settings)}"},
            timeout=30,
        )
        wait_until(lambda: bool(client.get("/v1/nodes").json()), 120, "the node did not report")
        body = {"name": "bench", "frames": f"1-{frames}", "chunk_size": frames}
        started = time.perf_counter()
        job = client.post("/v1/jobs", json={**body, "renderer": renderer}).json()

        wait_for_job(farm, client, job["id"])
        return frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="320x180", help="resolution, WIDTHxHEIGHT")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples")
    parser.add_argument("--rounds", type=int, default=3, help="bare and farm runs, alternated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    blender = find_blender()
    if blender is None:
        sys.exit('no Blender here: pip install ".[blender]" or put blender on PATH')
    width, height = (int(n) for n in args.size.split("x"))
    renderer = {
        "kind": "blender", "scene": SCENE, "engine": "CYCLES", "samples": args.samples,
        "resolution_x": width, "resolution_y": height, "cycles_device": "CPU",
    }  # fmt: skip
    bare_rates: list[float] = []
    farm_rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="renderfarm-bench-") as folder:
        embedded = EmbeddedRedis()
        embedded.start()
        try:
            for round_ in range(args.rounds):
                data_dir = Path(folder) / f"round-{round_}"
                settings = Settings(
                    _env_file=None,  # type: ignore[call-arg]
                    data_dir=data_dir,
                    broker_url=embedded.url,
                    tick_seconds=0.1,
                )
                build_scene(blender, settings.storage_root / SCENE)
                bare_rates.append(bench_bare(settings.storage_root, args.frames, renderer))
                farm_rates.append(bench_farm(settings, args.frames, renderer))
                print(
                    f"round {round_ + 1}: bare {bare_rates[-1]:.3f} frames/s, "
                    f"farm {farm_rates[-1]:.3f} frames/s",
                    file=sys.stderr,
                )
        finally:
            embedded.stop()
    bare, farm = statistics.median(bare_rates), statistics.median(farm_rates)
    result = {
        "bare_frames_per_s": round(bare, 3),
        "farm_frames_per_s": round(farm, 3),
        "ratio": round(farm / bare, 3),
        "ratio_per_round": [round(f / b, 3) for f, b in zip(farm_rates, bare_rates, strict=True)],
        "frames": args.frames,
        "size": args.size,
        "samples": args.samples,
        "blender": blender.describe(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"medians of {args.rounds} alternating rounds, {args.frames} frames at {args.size}")
    print(f"{'bare Blender (one chunk)':<30}{bare:>10.3f} frames/s")
    print(f"{'farm (one slot, chunk size N)':<30}{farm:>10.3f} frames/s")
    print(f"{'ratio farm / bare':<30}{farm / bare:>10.3f}")
    print("ratio per round: " + ", ".join(str(r) for r in result["ratio_per_round"]))  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
