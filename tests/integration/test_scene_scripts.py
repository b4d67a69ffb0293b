"""Scripts inside scenes run only for the studios an operator allowed, on a farm that
runs scene scripts at all: granted with the operator's command line, enforced when a
job is submitted over the API, shown in the studio listing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner, Result

from api.app import create_app
from scheduler.db import JobRow
from scheduler.launch.cli import app as cli
from scheduler.settings import Settings

pytestmark = pytest.mark.integration

SCRIPTED = {
    "name": "sh020", "frames": "1", "requirements": {"tags": ["blender-4.5"]},
    "renderer": {"kind": "blender", "scene": "sh020.blend", "allow_scripts": True},
}  # fmt: skip
PLAIN = {**SCRIPTED, "renderer": {"kind": "blender", "scene": "sh020.blend"}}


def operator_of(settings: Settings) -> Callable[..., Result]:
    """Runs ``renderfarm ...`` as an operator of this test's farm would."""
    env = {
        "RENDERFARM_DATABASE_URL": settings.effective_database_url,
        "RENDERFARM_DATA_DIR": str(settings.data_dir),
        "RENDERFARM_ALLOW_SCENE_SCRIPTS": str(settings.allow_scene_scripts).lower(),
    }

    def run(*args: str) -> Result:
        result = CliRunner().invoke(cli, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result

    return run


def farm(engine: Engine, settings: Settings) -> TestClient:
    return TestClient(create_app(settings, engine))


def jobs(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(JobRow)).one()


def bearer(result: Result) -> dict[str, str]:
    return {"Authorization": f"Bearer {result.stdout.strip()}"}


def test_a_job_runs_scene_scripts_only_where_an_operator_allowed_its_studio(
    engine: Engine, settings: Settings
) -> None:
    settings = settings.model_copy(update={"allow_scene_scripts": True})
    operator = operator_of(settings)
    east = bearer(operator("studio", "create", "east", "--allow-scene-scripts"))
    west = bearer(operator("studio", "create", "west studio"))
    with farm(engine, settings) as client:
        assert client.post("/v1/jobs", json=SCRIPTED, headers=east).status_code == 201

        refused = client.post("/v1/jobs", json=SCRIPTED, headers=west)
        assert refused.status_code == 422
        (detail,) = refused.json()["detail"]
        assert detail["loc"] == ["body", "renderer.allow_scripts"]
        assert "an operator must allow" in detail["msg"]
        assert "renderfarm studio scripts 'west studio' --allow" in detail["msg"]
        assert jobs(engine) == 1  # a refused submission creates nothing
        assert client.post("/v1/jobs", json=PLAIN, headers=west).status_code == 201

        granted = operator("studio", "scripts", "west studio", "--allow")
        assert granted.stdout.strip() == "west studio: scene scripts allowed"
        assert client.post("/v1/jobs", json=SCRIPTED, headers=west).status_code == 201

        operator("studio", "scripts", "east", "--forbid")
        assert client.post("/v1/jobs", json=SCRIPTED, headers=east).status_code == 422
        assert client.post("/v1/jobs", json=PLAIN, headers=east).status_code == 201
    listing = operator("studio", "list")
    assert listing.stdout.splitlines() == [
        "east: weight 1, scene scripts not allowed, templates not allowed, no quota",
        "west studio: weight 1, scene scripts allowed, templates not allowed, no quota",
    ]
    assert listing.stderr == ""


def test_the_farm_switch_off_forbids_scene_scripts_to_every_studio(
    engine: Engine, settings: Settings
) -> None:
    assert not settings.allow_scene_scripts  # the default
    operator = operator_of(settings)
    east = bearer(operator("studio", "create", "east", "--allow-scene-scripts"))
    with farm(engine, settings) as client:
        refused = client.post("/v1/jobs", json=SCRIPTED, headers=east)
        assert refused.status_code == 422
        assert "RENDERFARM_ALLOW_SCENE_SCRIPTS" in refused.text
        assert client.post("/v1/jobs", json=PLAIN, headers=east).status_code == 201
    listing = operator("studio", "list")
    assert (
        listing.stdout == "east: weight 1, scene scripts allowed, templates not allowed, no quota\n"
    )
    assert "RENDERFARM_ALLOW_SCENE_SCRIPTS is off" in listing.stderr


def test_an_unknown_studio_cannot_be_granted(settings: Settings) -> None:
    result = CliRunner().invoke(
        cli,
        ["studio", "scripts", "nobody", "--allow"],
        env={"RENDERFARM_DATABASE_URL": settings.effective_database_url},
    )
    assert result.exit_code == 1 and "no studio named 'nobody'" in result.output
