"""``renderfarm demo``: the embedded farm renders a sample job over the real REST API.

Starts the farm (its own Redis, SQLite, a scheduler, local workers), creates a studio
key, submits a built-in ray-traced job over HTTP as a studio would, shows a live
progress bar, prints where the frames are and the throughput, and stops the farm.
"""

from __future__ import annotations

import time

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scheduler.db import make_engine
from scheduler.errors import Conflict
from scheduler.launch.embedded import LocalFarm
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService

DEMO_STUDIO = "demo"
FINAL_STATES = {"done", "failed", "cancelled"}


def studio_key(settings: Settings) -> str:
    service = StudioService(make_engine(settings.effective_database_url), settings)
    try:
        return service.create_studio(DEMO_STUDIO)[1]
    except Conflict:
        return service.create_key(DEMO_STUDIO)


def run_demo(
    settings: Settings,
    frames: str,
    width: int,
    height: int,
    samples: int,
    workers: int,
    console: Console,
) -> bool:
    """True when the job rendered every frame."""
    with console.status("starting the embedded farm ..."):
        farm = LocalFarm(settings, workers=workers, slots=1, api_port=_free_port())
        farm.start()
    try:
        console.print(f"farm up: API {farm.api_url}, {workers} local render node(s)")
        key = studio_key(settings)
        client = httpx.Client(
            base_url=farm.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=10.0
        )
        response = client.post(
            "/v1/jobs",
            json={
                "name": "demo: orbiting spheres",
                "frames": frames,
                "priority": 50,
                "pool": "cpu",
                "renderer": {
                    "kind": "builtin",
                    "width": width,
                    "height": height,
                    "samples": samples,
                },
            },
        )
        if response.status_code != 201:
            console.print(
                f"[red]submission refused ({response.status_code}): {response.text}[/red]"
            )
            return False
        job = response.json()
        started = time.monotonic()
        with Progress(
            TextColumn("[bold]job {task.fields[job]}[/bold] {task.fields[state]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task(
                "render", total=job["progress"]["frames_total"], job=job["id"], state=job["state"]
            )
            while job["state"] not in FINAL_STATES:
                time.sleep(0.5)
                farm.check_children()
                job = client.get(f"/v1/jobs/{job['id']}").json()
                progress.update(bar, completed=job["progress"]["frames_done"], state=job["state"])
        elapsed = time.monotonic() - started
        done = job["progress"]["frames_done"]
        frames_dir = settings.storage_root / "jobs" / str(job["id"]) / "frames"
        if job["state"] != "done":
            console.print(f"[red]job {job['id']} ended {job['state']}: {job['message']}[/red]")
            return False
        console.print(
            f"[green]rendered {done} frames[/green] in {elapsed:.1f} s: "
            f"{done / elapsed:.2f} frames/s on {workers} node(s)"
        )
        energy = job["energy"]
        if energy["frames_metered"]:
            method = client.get(f"/v1/jobs/{job['id']}/frames?limit=1").json()[0]
            console.print(
                f"energy ({method['energy_method']}): {energy['it_joules']:.0f} J IT "
                f"({energy['per_frame']['it_joules']:.1f} J per frame), "
                f"{energy['facility_kwh'] * 1000:.3f} Wh facility, "
                f"{energy['co2_grams']:.3f} g CO2, {energy['cost']:.6f} {energy['currency']}"
            )
        console.print(f"frames: {frames_dir}")
        return True
    finally:
        with console.status("stopping the farm ..."):
            farm.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
