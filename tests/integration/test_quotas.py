"""An operator bounds what a studio may ask (`renderfarm studio quota`): unfinished
jobs, frames waiting for a node, API requests per second. Past a bound the studio gets
429 with Retry-After, nothing is created, and other studios are not affected."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from scheduler.errors import InvalidRequest
from scheduler.launch.cli import app as cli
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from tests.integration.test_scene_scripts import bearer, farm, jobs, operator_of

pytestmark = pytest.mark.integration


def job(frames: str = "1-10") -> dict[str, Any]:
    return {"name": "sh010", "frames": frames, "renderer": {"kind": "noop"}}


def test_a_studio_past_its_unfinished_jobs_waits(
    engine: Engine, settings: Settings, broker: redis.Redis
) -> None:
    operator = operator_of(settings)
    east = bearer(operator("studio", "create", "east"))
    west = bearer(operator("studio", "create", "west"))
    assert operator("studio", "quota", "east", "--jobs", "2").stdout == (
        "east: at most 2 unfinished jobs\n"
    )
    with farm(engine, settings) as client:
        first = client.post("/v1/jobs", json=job(), headers=east).json()
        assert client.post("/v1/jobs", json=job(), headers=east).status_code == 201
        refused = client.post("/v1/jobs", json=job(), headers=east)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "60"
        assert "2 unfinished jobs, its quota is 2" in refused.json()["detail"]
        assert jobs(engine) == 2  # nothing created
        assert client.post("/v1/jobs", json=job(), headers=west).status_code == 201
        assert client.post(f"/v1/jobs/{first['id']}/cancel", headers=east).status_code == 200
        assert client.post("/v1/jobs", json=job(), headers=east).status_code == 201


def test_a_studio_past_its_queued_frames_waits(
    engine: Engine, settings: Settings, broker: redis.Redis
) -> None:
    operator = operator_of(settings)
    east = bearer(operator("studio", "create", "east"))
    operator("studio", "quota", "east", "--frames", "100")
    with farm(engine, settings) as client:
        assert client.post("/v1/jobs", json=job("1-60"), headers=east).status_code == 201
        refused = client.post("/v1/jobs", json=job("1-41"), headers=east)
        assert refused.status_code == 429
        assert "60 frames queued" in refused.json()["detail"]
        assert client.post("/v1/jobs", json=job("1-40"), headers=east).status_code == 201
    operator("studio", "quota", "east")  # no bound given: removed
    assert (
        "east: weight 1, scene scripts not allowed, templates not allowed, no quota"
        in operator("studio", "list").stdout
    )


def test_a_studio_past_its_request_rate_is_told_to_retry(
    engine: Engine, settings: Settings, broker: redis.Redis
) -> None:
    operator = operator_of(settings)
    east = bearer(operator("studio", "create", "east"))
    west = bearer(operator("studio", "create", "west"))
    operator("studio", "quota", "east", "--rate", "3")
    with farm(engine, settings) as client:
        began = time.time()
        answers = [client.get("/v1/jobs", headers=east) for _ in range(12)]
        windows = int(time.time()) - int(began) + 1  # the one-second windows they fell in
        passed = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code == 429]
        assert len(passed) + len(refused) == 12
        assert len(passed) <= 3 * windows and refused, [a.status_code for a in answers]
        assert refused[0].headers["retry-after"] == "1"
        assert "more than 3 requests a second" in refused[0].json()["detail"]
        assert all(client.get("/v1/jobs", headers=west).status_code == 200 for _ in range(12))


def test_a_quota_past_the_databases_integers_is_refused_saying_so(
    engine: Engine, settings: Settings
) -> None:
    operator = operator_of(settings)
    operator("studio", "create", "east")
    too_big = CliRunner().invoke(cli, ["studio", "quota", "east", "--jobs", "99999999999"])
    assert too_big.exit_code == 2 and "--jobs" in too_big.output
    service = StudioService(engine, settings)
    with pytest.raises(InvalidRequest, match="a quota is 1 to 2147483647"):
        service.set_quota("east", None, 2**40, None)
