"""The farm as a user runs it: `renderfarm api`, `renderfarm scheduler` and two
`renderfarm worker` processes on real Redis and a real database, driven over HTTP."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from scheduler.settings import Settings
from tests.conftest import Processes, farm_env, free_port, renderers_running, wait_for

pytestmark = pytest.mark.end_to_end


@pytest.fixture
def farm(
    processes: Processes, settings: Settings, engine: Engine, broker: redis.Redis
) -> Iterator[httpx.Client]:
    port = free_port()
    processes.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    processes.start("scheduler", "scheduler")
    processes.worker("node-1", slots=1)
    processes.worker("node-2", slots=1)
    key = subprocess.run(
        [sys.executable, "-m", "scheduler.launch.cli", "studio", "create", "studio-e2e"],
        env=farm_env(settings),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert key.startswith("rf_")
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )

    def api_up() -> bool:
        try:
            return client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(api_up, 60, "the API to answer")
    wait_for(lambda: len(client.get("/v1/nodes").json()) == 2, 60, "two nodes online")
    yield client
    client.close()


def submit(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def job_state(client: httpx.Client, job_id: int) -> dict[str, Any]:
    return client.get(f"/v1/jobs/{job_id}").json()


def metric(text: str, name: str, labels: str) -> float:
    """The value of sample ``name{labels}`` in a /metrics text; labels in any order."""
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return float(sample.value)
    raise AssertionError(f"{name}{{{labels}}} not in /metrics")


def test_render_a_job_and_cancel_another(farm: httpx.Client, settings: Settings) -> None:
    job = submit(
        farm,
        name="e2e: 24 frames",
        frames="1-24",
        renderer={"kind": "builtin", "width": 96, "height": 54},
    )
    finished = wait_for(
        lambda: (j := job_state(farm, job["id"]))["state"] in ("done", "failed") and j,
        240,
        "the 24-frame job to finish",
    )
    assert finished["state"] == "done"
    assert finished["progress"]["frames_done"] == 24

    frames = farm.get(f"/v1/jobs/{job['id']}/frames").json()
    assert len(frames) == 24 and {f["state"] for f in frames} == {"done"}
    assert {f["node"] for f in frames} == {"node-1", "node-2"}
    files = sorted((settings.storage_root / "jobs" / str(job["id"]) / "frames").glob("*.png"))
    assert len(files) == 24
    for path in files:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (96, 54)
    served = farm.get(frames[0]["output_url"])
    assert served.status_code == 200 and served.content == files[0].read_bytes()
    assert "renderfarm-frame: 1" in farm.get(frames[0]["log_url"]).text

    # Every frame metered by the nodes' power model and billed in their region.
    energy = finished["energy"]
    assert energy["frames_metered"] == 24 and energy["currency"] == "CNY"
    assert all(f["energy_method"] == "model" and f["energy_joules"] > 0 for f in frames)
    assert sum(f["energy_joules"] for f in frames) == pytest.approx(energy["it_joules"])
    assert energy["facility_joules"] == pytest.approx(energy["it_joules"] * 1.2)  # guizhou PUE
    assert energy["cost"] == pytest.approx(energy["facility_kwh"] * 0.35)
    assert energy["co2_grams"] == pytest.approx(energy["facility_kwh"] * 536.6)
    assert energy["per_frame"]["it_joules"] == pytest.approx(energy["it_joules"] / 24)
    usage = farm.get("/v1/studios/me/usage").json()
    assert usage["studio"] == "studio-e2e" and usage["timezone"] == "Asia/Shanghai"
    assert sum(day["frames"] for day in usage["days"]) == 24
    assert usage["total"]["co2_grams"] == pytest.approx(energy["co2_grams"])

    metrics = httpx.get(f"{farm.base_url}/metrics").text
    where = 'pool="cpu",region="guizhou"'
    assert metric(metrics, "renderfarm_frames_rendered_total", f'{where},method="model"') == 24
    assert metric(metrics, "renderfarm_frame_render_seconds_count", where) == 24
    assert metric(metrics, "renderfarm_frame_energy_joules_count", f'{where},method="model"') == 24
    assert metric(metrics, "renderfarm_it_energy_joules_total", where) == pytest.approx(
        energy["it_joules"]
    )
    assert metric(metrics, "renderfarm_jobs", 'state="done"') == 1
    done_energy = metric(
        metrics, "renderfarm_attempt_energy_joules_total", 'pool="cpu",state="done"'
    )
    assert done_energy == pytest.approx(energy["it_joules"])  # every attempt succeeded
    nodes = farm.get("/v1/nodes").json()
    assert {(n["region"], n["energy_method"]) for n in nodes} == {("guizhou", "model")}
    assert not any("hostname" in n for n in nodes)  # a studio's view: no machine names
    wait_for(
        lambda: (
            metric(httpx.get(f"{farm.base_url}/metrics").text, "renderfarm_node_power_watts", where)
            > 0
        ),
        30,
        "the nodes to report their power",
    )

    # A second job, cancelled while it renders.
    slow = submit(
        farm,
        name="e2e: cancelled",
        frames="1-40",
        renderer={"kind": "builtin", "width": 480, "height": 270, "samples": 2},
    )
    wait_for(
        lambda: job_state(farm, slow["id"])["progress"]["frames_done"] >= 2,
        120,
        "the second job to render a few frames",
    )
    wait_for(lambda: renderers_running(slow["id"]), 30, "a renderer of the second job")
    cancelled = farm.post(f"/v1/jobs/{slow['id']}/cancel").json()
    cancelled_at = time.time()
    assert cancelled["state"] == "cancelled"
    done_at_cancel = cancelled["progress"]["frames_done"]
    assert done_at_cancel < 40, "the job finished before it could be cancelled"
    wait_for(lambda: not renderers_running(slow["id"]), 30, "no renderer of the cancelled job")
    time.sleep(2.0)  # let any straggling event arrive: none may count
    after = job_state(farm, slow["id"])
    assert after["state"] == "cancelled"
    assert after["progress"]["frames_done"] == done_at_cancel
    frames_dir = settings.storage_root / "jobs" / str(slow["id"]) / "frames"
    late = [p.name for p in frames_dir.glob("*.png") if p.stat().st_mtime > cancelled_at + 1.0]
    assert late == [], "frames written after the cancel took effect"
    assert renderers_running(slow["id"]) == []
